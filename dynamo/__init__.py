"""DynaMO: dynamic rollout allocation and advantage modulation on a GRPO loop (see README)."""
