"""What every model-family module provides (`FamilyParts`, its adapter's stages), and the helpers they share.

An adapter re-expresses its diffusers pipeline's `__call__` as stages (encode prompt, prepare latents, set
timesteps, transformer call, guidance, scheduler step, decode) that the engine interleaves across requests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from engine.request import GenerationRequest, InvalidRequest, ModelUnavailable
from engine.step_cache import DEFAULT_ROW_ARGS

if TYPE_CHECKING:
    from engine.layer_split.layout import Layout
    from engine.packing import PackedForward
    from engine.registry import ModelSpec
    from engine.sequence import Sequence

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TextEmbedding:
    """One prompt, encoded: embeddings (1, L, D), plus a mask (1, L) and pooled vector where the family has them."""

    embeds: torch.Tensor
    mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.embeds.shape[1]


@dataclass
class ModelCall:
    """One batched transformer forward: which model, its keyword arguments, and how many rows it holds."""

    model: torch.nn.Module
    kwargs: dict[str, Any]
    rows: int


class FamilyAdapter:
    """Base class: a family adapter over a loaded diffusers pipeline.

    Subclasses fill in the stages; the engine owns the order and the batching.
    """

    family: ClassVar[str]
    pipeline_class: ClassVar[str]
    # Tokens the pipeline pads every prompt to; a registry entry may override with options.max_sequence_length.
    default_max_sequence_length: ClassVar[int] = 226
    # Transformer-block arguments with one entry per row, sliced when only some rows run a block (first-block
    # caching); the others (rotary tables shared by all rows) pass as they are.
    block_row_args: ClassVar[tuple[str, ...]] = DEFAULT_ROW_ARGS
    # Entries of `Sequence.extra` that a scheduler step changes: a checkpoint saves them (engine.checkpoint).
    state_extra: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipe: Any, options: dict[str, Any] | None = None) -> None:
        self.pipe = pipe
        self.options = dict(options or {})
        self.max_sequence_length = int(self.options.get("max_sequence_length", self.default_max_sequence_length))
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.device = self.transformer.device
        self.dtype = self.transformer.dtype

    # --- caching ---------------------------------------------------------------------------------

    def text_settings(self) -> tuple:
        """Everything besides the prompt that shapes its embedding: part of the prompt cache's key."""
        return (self.family, self.max_sequence_length, repr(sorted(self.options.items())))

    def models(self) -> list[torch.nn.Module]:
        """Every transformer that serves steps (two-expert models have two)."""
        return [self.transformer]

    def cache_blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The model's transformer blocks in the order its forward calls them."""
        return list(model.transformer_blocks)

    def text_kv_parts(self, model: torch.nn.Module) -> tuple[torch.nn.Module, list[Any]] | None:
        """For cross-attention families: the text projection and each block's cross-attention (text K/V cache)."""
        return None

    def packed_forward(self, model: torch.nn.Module) -> PackedForward | None:
        """The family's packed forward over `model` (engine.packing), or None: same-shape groups call diffusers.

        Build it once per model and return the same object: the runner asks at every forward.
        """
        return None

    def row_positions(self, seq: Sequence) -> Any:
        """Position information a packed row needs beyond its latents' shape (`PackedRow.positions`); None here."""
        return None

    @property
    def packs(self) -> bool:
        """Whether every model of this adapter runs packed forwards (one forward per model per iteration)."""
        return all(self.packed_forward(m) is not None for m in self.models())

    # --- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, spec: ModelSpec) -> FamilyAdapter:
        """Load the pipeline directory (or hub id) named by the registry entry onto its first device."""
        import diffusers

        pipeline_cls = getattr(diffusers, cls.pipeline_class)
        dtype = DTYPES[spec.dtype]
        local = os.path.isdir(spec.path)
        if not local and os.path.isabs(spec.path):
            raise ModelUnavailable(f"model {spec.name!r}: no pipeline directory at {spec.path}")
        try:
            pipe = pipeline_cls.from_pretrained(spec.path, dtype=dtype, local_files_only=local)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"model {spec.name!r}: cannot load {spec.path}: {exc}") from exc
        pipe.to(spec.devices[0])
        pipe.set_progress_bar_config(disable=True)
        for name in ("text_encoder", "text_encoder_2", "transformer", "transformer_2", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.eval()  # dropout off: outputs must not depend on the call
        return cls(pipe, spec.options)

    # --- stages (pipeline order) -----------------------------------------------------------------

    # Set by each adapter from the loaded components: pixels per latent (x patch) and frames per latent frame.
    spatial_multiple: int = 16
    temporal_factor: int = 4

    def check_request(self, request: GenerationRequest) -> None:
        """What this checkpoint needs beyond the registry's rules; raises InvalidRequest before any compute.

        The pipelines silently round frame counts and sizes they cannot use; the engine refuses them instead.
        """
        if (request.num_frames - 1) % self.temporal_factor:
            raise InvalidRequest("num_frames", f"must be {self.temporal_factor}k+1 for this model")
        for name, value in (("height", request.height), ("width", request.width)):
            if value % self.spatial_multiple:
                raise InvalidRequest(name, f"must be a multiple of {self.spatial_multiple} for this model")

    def encode_prompts(self, prompts: list[str]) -> list[TextEmbedding]:
        """Encode distinct prompts in one batched call; one TextEmbedding per prompt."""
        raise NotImplementedError

    def tokenize(self, prompts: list[str]) -> Any:
        """T5-style tokenization as the pipelines do it: padded to max_sequence_length, truncated."""
        return self.pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )

    def uses_cfg(self, request: GenerationRequest) -> bool:
        """Whether this request runs an unconditional row (classifier-free guidance)."""
        return request.guidance_scale > 1.0

    def prepare_latents(self, request: GenerationRequest, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def set_timesteps(self, seq: Sequence) -> None:
        """Give the sequence its own scheduler, with its timesteps set."""
        raise NotImplementedError

    def group_key(self, seq: Sequence) -> tuple:
        """Sequences with equal keys can share one transformer forward."""
        return (tuple(seq.latents.shape), seq.cond.length, self.expert(seq))

    def decode_key(self, seq: Sequence) -> tuple:
        """Finished sequences with equal keys can share one VAE call."""
        return tuple(seq.latents.shape)

    def expert(self, seq: Sequence) -> int:
        """Which transformer serves the sequence's current step (two-expert models switch mid-way)."""
        return 0

    def tokens_per_row(self, seq: Sequence) -> int:
        """Sequence length of one row in the transformer: video patches plus text tokens."""
        raise NotImplementedError

    def model_call(self, seqs: list[Sequence]) -> ModelCall:
        """Batch the sequences' current step into one forward: conditional rows first, then unconditional."""
        raise NotImplementedError

    def guide(self, seq: Sequence, cond: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor:
        if uncond is None:
            return cond
        return uncond + seq.request.guidance_scale * (cond - uncond)

    def scheduler_step(self, seq: Sequence, noise_pred: torch.Tensor) -> None:
        seq.latents = seq.scheduler.step(noise_pred, seq.timestep, seq.latents, return_dict=False)[0]

    def decode(self, latents: torch.Tensor, seqs: list[Sequence]) -> list[np.ndarray]:
        """Decode a batch of equal-shape latents to float frames in [0, 1], (F, H, W, 3) each."""
        raise NotImplementedError

    def decode_stream(self, latents: torch.Tensor, seq: Sequence, long: bool) -> Iterator[np.ndarray]:
        """One video's float frames (f, H, W, 3) in order, a few at a time, as its VAE decodes them (engine.vae), so
        memory does not grow with the video's length. `long`: the latent is longer than the model's native window,
        where a family whose VAE tiles time approximately (LTX) may do so. Here: the whole decode, in one piece."""
        yield from self.decode(latents, [seq])

    def embeds_frame_timesteps(self) -> bool:
        """Whether every packed forward of this adapter embeds a timestep per latent frame (`PackedRow.timestep` of
        shape (F,)), so a continuation's clean context frames can run at timestep 0; False: one per row."""
        return False

    def enable_vae_tiling(self) -> bool:
        """Decode in tiles (and frame by frame where the VAE supports it) so long videos fit in memory."""
        if hasattr(self.vae, "enable_tiling"):
            self.vae.enable_tiling()
            return True
        return False

    # --- shared helpers --------------------------------------------------------------------------

    def randn(
        self, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        return randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)

    @staticmethod
    def to_frames(video: torch.Tensor) -> list[np.ndarray]:
        """(B, C, F, H, W) in [-1, 1] -> B float arrays (F, H, W, C) in [0, 1], as diffusers' VideoProcessor."""
        video = (video / 2 + 0.5).clamp(0, 1)
        return [v.permute(1, 2, 3, 0).float().cpu().numpy() for v in video]


def trim_padding(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the batch's common trailing padding before a masked (or causal) text encoder runs.

    Under its attention mask a true token never sees the padding, so its output is the same; the padded
    positions are zeroed or masked downstream. Encoding 512 positions for a ten-token prompt is pure waste.
    """
    keep = max(1, int(mask.sum(dim=1).max()))
    return ids[:, :keep], mask[:, :keep]


def pad_positions(hidden: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad (B, n, D) text states back to (B, length, D), the shape the transformer was given before."""
    missing = length - hidden.shape[1]
    return (
        hidden if missing <= 0 else torch.cat([hidden, hidden.new_zeros(hidden.shape[0], missing, hidden.shape[2])], 1)
    )


def stack_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)


# (frame counts, (height, width) sizes) of a benchmark mix; valid for the family's frame and size rules.
BenchShapes = tuple[tuple[int, ...], tuple[tuple[int, int], ...]]


def same_kwargs(kwargs: dict[str, Any], options: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
    """A family whose pipeline needs no `__call__` argument beyond the common ones (engine.reference)."""
    return kwargs


@dataclass(frozen=True)
class FamilyParts:
    """What a family module exports as `FAMILY`: everything of the family that the rest of the engine reads.

    The registry (`engine.families.FAMILIES`) holds the family's name and frame/size rules; the rest is here.
    """

    adapter: type[FamilyAdapter]  # the pipeline-order stages; `adapter.packed_forward` gives the packed forward
    layout: Layout  # where a layer split cuts the transformer (engine.layer_split)
    # Random-weight pipelines (engine.tiny) by directory name: `build(small)` returns the pipeline. The first is the
    # family's own; variants that are not families of their own (Wan 2.2's two experts) are built only when named.
    tiny: dict[str, Callable[[bool], Any]]
    bench_shapes: BenchShapes  # the benchmark's CPU mix (engine.bench.mix): 2 lengths x 2 sizes
    mixed_bench_shapes: BenchShapes  # the mixed-shape mix: at least 12 distinct (frames, height, width) in 16
    # The pipeline's `__call__` arguments that make diffusers serve a request as the engine does (engine.reference):
    # `pipeline_kwargs(common, spec.options, request)` returns them, given the arguments every family takes.
    pipeline_kwargs: Callable[[dict[str, Any], dict[str, Any], GenerationRequest], dict[str, Any]] = same_kwargs
    tiny_options: dict[str, Any] = field(default_factory=dict)  # registry options a tiny model of the family needs
