"""Real-size random-weight pipelines for the GPU benchmark, built in memory on the device.

Wan 2.1 1.3B's transformer and VAE dimensions exactly; the UMT5-XXL text encoder keeps its width (4096)
but only 4 of its 24 layers, since text encoding is a small share of the work and its weights are random.
"""

from __future__ import annotations

import torch


def wan_1_3b_random(
    device: str = "cuda", dtype: torch.dtype = torch.bfloat16, num_layers: int = 30, text_layers: int = 4
):
    """Wan 2.1 1.3B's pipeline with random weights; fewer layers only for a smoke run off the GPU."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from engine.tiny import t5_tokenizer

    torch.manual_seed(0)
    tokenizer = t5_tokenizer()
    with torch.device(device):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=12,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=8960,
            num_layers=num_layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        )
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=4096,
                d_ff=10240,
                d_kv=64,
                num_heads=64,
                num_layers=text_layers,
                relative_attention_num_buckets=32,
                feed_forward_proj="gated-gelu",
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
        vae = AutoencoderKLWan()  # the stock configuration is Wan 2.1's VAE
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder.to(dtype).eval(),
        transformer=transformer.to(dtype).eval(),
        vae=vae.to(torch.float32).eval(),  # Wan's VAE is run in float32, as its model cards do
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
