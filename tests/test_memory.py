# python -m pytest -q tests/test_memory.py  — the memory plan's arithmetic, worked by hand for the paper's shapes.
import pytest

from dynamo import memory

# Qwen2.5-Math's published configs (scripts/random_model.py) and their parameter counts (tied embeddings at 1.5B).
Q15 = memory.Shape(params=1_543_714_304, layers=28, hidden=1536, intermediate=8960, heads=12, kv_heads=2,
                   vocab=151_936)
Q7 = memory.Shape(params=7_615_616_512, layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4,
                  vocab=152_064)
H100 = 80e9


def test_kv_cache_per_token():
    # 2 (K, V) x 28 layers x kv_heads x head_dim 128 x bytes
    assert memory.kv_bytes_per_token(Q15, 4) == 2 * 28 * 2 * 128 * 4 == 57_344
    assert memory.kv_bytes_per_token(Q7, 2) == 2 * 28 * 4 * 128 * 2 == 57_344


def test_the_7b_paper_step_on_one_rank_cannot_fit_and_says_what_to_lower():
    """512 prompts x 16 rollouts over 8 GPUs: 1,024 rows a rank, ~3,400 positions, bf16: 199.7 GB of KV cache."""
    p = memory.plan(Q7, rows=1024, positions=3400, micro_batch_size=8, world=8, compute_bytes=2, checkpointing=True)
    assert p.kv_cache == 1024 * 3400 * 57_344  # 199.65 GB
    assert p.optimizer == 8 * Q7.params / 8 and p.training_state == 16 * Q7.params / 8
    with pytest.raises(ValueError, match="lower rollout.max_rows"):
        memory.check(p, H100, 0)
    rows = memory.rollout_rows(Q7, positions=3400, memory=H100, world=8, compute_bytes=2)
    # 0.9 x 80 GB - 15.23 GB weights - 7.62 GB AdamW over 8 ranks, / (3400 x 57,344 B + 152,064 x 4 B) per row
    assert rows == int((0.9 * H100 - 2 * Q7.params - Q7.params) // (3400 * 57_344 + 152_064 * 4)) == 251
    memory.check(memory.plan(Q7, rows=rows, positions=3400, micro_batch_size=8, world=8, compute_bytes=2,
                             checkpointing=True), H100, 0)  # fits


def test_the_1_5b_one_gpu_recipe():
    """512 rows, 1,024 new tokens after prompts of up to 1,024: float32 (no FSDP), checkpointing on."""
    p = memory.plan(Q15, rows=512, positions=2048, micro_batch_size=16, compute_bytes=4, checkpointing=True)
    assert p.kv_cache == 512 * 2048 * 57_344  # 60.1 GB: too much next to 24.7 GB of state
    assert p.training_state == 16 * Q15.params  # 24.7 GB
    # per token: 28 layer inputs of 1,536 floats + one layer's saved tensors (10 x 1,536 + 2 x 256 + 4 x 8,960)
    assert p.activations == 16 * 2048 * (28 * 1536 * 4 + (10 * 1536 + 2 * 256 + 4 * 8960) * 4)
    with pytest.raises(ValueError, match="rollout.max_rows"):
        memory.check(p, H100, 0)
    rows = memory.rollout_rows(Q15, positions=2048, memory=H100, compute_bytes=4)
    assert rows == int((0.9 * H100 - 12 * Q15.params) // (2048 * 57_344 + 151_936 * 4)) == 452
    fits = memory.plan(Q15, rows=rows, positions=2048, micro_batch_size=16, compute_bytes=4, checkpointing=True)
    memory.check(fits, H100, 0)
    assert "452 rows x 2048 positions" in fits.line()


def test_an_update_that_cannot_fit_names_the_micro_batch():
    p = memory.plan(Q15, rows=8, positions=2048, micro_batch_size=16, compute_bytes=4, checkpointing=False)
    assert p.activations == 16 * 2048 * 28 * (10 * 1536 + 2 * 256 + 4 * 8960) * 4  # 190 GB without checkpointing
    with pytest.raises(ValueError, match="micro_batch_size.*activation_checkpointing"):
        memory.check(p, H100, 0)
