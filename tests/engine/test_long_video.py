"""Videos longer than the model's window: windowed co-denoising and latent continuation, in every family.

The tiny models are given a window of three latent frames here, so a long request of a few windows stays cheap.
A long request that fits one window is an ordinary request bit for bit; its windows batch with other requests'
rows without depending on them; checkpoints resume it exactly; it can be canceled; its frames stream in pieces
of a bounded size, equal to the whole decode; a Wan continuation's context frames run at timestep 0.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine import Engine, InvalidRequest, RequestCanceled
from engine.checkpoint import Checkpoint
from engine.families import FAMILIES
from engine.packing import PackedRow
from engine.request import CONTINUATION, WINDOWS, LongVideo
from engine.sequence import Sequence

TOLERANCE = 1e-5  # as tests/engine/test_exactness.py: a request's frames alone vs inside a batch
METHODS = (WINDOWS, CONTINUATION)
# Three latent frames per window in every family: (window frames, long frames = seven latent frames).
WINDOW = {"wan": 9, "hunyuanvideo": 9, "cogvideox": 17, "mochi": 13, "ltx": 17}
LONG = {"wan": 25, "hunyuanvideo": 25, "cogvideox": 49, "mochi": 37, "ltx": 49}


@pytest.fixture(scope="module")
def long_specs(specs):
    """Each family's tiny model with a short native window and a long limit of eight windows."""
    return {
        family: replace(
            specs[family],
            limits=replace(specs[family].limits, max_frames=WINDOW[family], max_long_frames=8 * WINDOW[family]),
        )
        for family in FAMILIES
    }


@pytest.fixture(scope="module")
def long_engines(long_specs):
    made: dict[str, Engine] = {}

    class Lazy(dict):
        def __missing__(self, family: str) -> Engine:
            made[family] = Engine(long_specs[family], output="float32")
            self[family] = made[family]
            return made[family]

    yield Lazy()
    for engine in made.values():
        engine.close()


def long_request(spec, family, method, make_request, request_id="long", **overrides):
    settings = replace(spec.long_video, method=method)
    fields = dict(num_frames=LONG[family], long_video=settings, num_inference_steps=4, seed=3)
    fields.update(overrides)
    return make_request(family, request_id, **fields)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["wan", "cogvideox", "ltx"])
def test_a_long_request_that_fits_one_window_equals_an_ordinary_request_bit_for_bit(
    family, method, engines, make_request
):
    ordinary = make_request(family, "ordinary", prompt=f"one window of {family}", seed=21)
    long = replace(ordinary, id="long", long_video=LongVideo(method=method))
    expected = engines[family].generate([ordinary])[0].frames
    frames = engines[family].generate([long])[0].frames
    assert np.array_equal(frames, expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_makes_a_video_several_windows_long(family, method, long_engines, long_specs, make_request):
    request = long_request(long_specs[family], family, method, make_request)
    progress: list[tuple[int, int]] = []
    result = long_engines[family].submit(request, lambda s, n: progress.append((s, n))).result(timeout=300)
    assert result.frames.shape == (LONG[family], 32, 32, 3)
    assert np.isfinite(result.frames).all() and result.frames.std() > 0
    done, total = progress[-1]
    assert done == total and [p[0] for p in progress] == sorted(p[0] for p in progress)
    settings, temporal = request.long_video, long_engines[family].adapter.temporal_factor
    latent, window = (LONG[family] - 1) // temporal + 1, (WINDOW[family] - 1) // temporal + 1
    if method == WINDOWS:
        # ceil((F - W) / (W - O)) + 1 windows a step, one more at the steps where the shifted grid needs it.
        pieces = -(-(latent - window) // (window - settings.overlap // temporal)) + 1
        assert 4 * pieces <= total <= 4 * (pieces + 1)
        assert len(result.stats.batch_sizes) == total  # one entry per window forward
    else:
        chunks = -(-(latent - window) // (window - settings.context_frames // temporal)) + 1
        assert total == 4 * chunks  # chunks of four steps, one after another
    assert result.latents.shape == long_engines[family].adapter.prepare_latents(request, torch.Generator()).shape


def test_windows_move_between_steps_so_seams_do_not_stay_in_place(long_engines):
    long_videos = long_engines["wan"].long_videos
    from engine.long_video import _Plan

    plan = _Plan(WINDOWS, total=12, window=5, share=2, steps=6)
    offsets = [tuple(long_videos._starts(plan, step)) for step in range(6)]
    assert len(set(offsets)) == 3  # every shift of the stride of three is visited
    for starts in offsets:
        covered = set()
        for start in starts:
            covered |= set(range(start, start + 5))
        assert covered == set(range(12)) and starts[-1] == 12 - 5


@pytest.mark.parametrize("method", METHODS)
def test_windows_of_a_long_request_batch_with_other_rows_without_depending_on_them(
    method, long_engines, long_specs, make_request
):
    engine = long_engines["wan"]
    request = long_request(long_specs["wan"], "wan", method, make_request, prompt=f"batched long {method}", seed=9)
    alone = engine.generate([request])[0]
    mates = [
        make_request("wan", f"mate{i}", prompt=f"a batch mate {i}", num_frames=WINDOW["wan"], seed=i) for i in range(3)
    ]
    together = engine.generate([request, *mates])[0]
    assert max(together.stats.batch_sizes) > max(alone.stats.batch_sizes)  # its rows shared forwards with others
    np.testing.assert_allclose(together.frames, alone.frames, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_a_long_request_resumed_from_a_checkpoint_equals_the_uninterrupted_one(
    method, long_engines, long_specs, make_request
):
    spec = long_specs["wan"]
    # Prompts no other test encodes, so both engines encode them alone (see tests/engine/test_resume.py).
    unseen = {"prompt": f"resumed long {method}", "negative_prompt": f"blurry {method}"}
    request = long_request(spec, "wan", method, make_request, **unseen, seed=4)
    engine = long_engines["wan"]
    uninterrupted = engine.generate([request])[0].frames
    taken: list[Checkpoint] = []
    engine.submit(request, checkpoint_every=1, on_checkpoint=taken.append).result(timeout=300)
    checkpoints = {c.step: Checkpoint.from_bytes(c.to_bytes()) for c in taken}
    # Continuation: three chunks of four steps; steps 5 and 9 are inside later chunks, with the earlier chunks'
    # latents in the checkpoint, and step 4 is a chunk's first.
    with Engine(spec, output="float32") as fresh:
        for k in (1, 3) if method == WINDOWS else (2, 4, 5, 9):
            resumed = fresh.submit(request, resume_from=checkpoints[k]).result(timeout=300)
            assert np.array_equal(resumed.frames, uninterrupted), k


def test_a_long_request_can_be_canceled_mid_way(long_engines, long_specs, make_request):
    engine = long_engines["wan"]
    request = long_request(
        long_specs["wan"], "wan", CONTINUATION, make_request, "canceled", num_inference_steps=20, num_frames=65
    )
    started = threading.Event()
    future = engine.submit(request, lambda step, total: started.set())
    assert started.wait(timeout=120)
    assert engine.cancel("canceled")
    with pytest.raises(RequestCanceled):
        future.result(timeout=120)


def test_frames_stream_to_the_callback_one_latent_frame_at_a_time(long_engines, long_specs, make_request):
    engine = long_engines["wan"]
    request = long_request(long_specs["wan"], "wan", WINDOWS, make_request, prompt="streamed long", seed=8)
    whole = engine.generate([request])[0].frames
    pieces: list[np.ndarray] = []
    result = engine.submit(request, on_frames=pieces.append).result(timeout=300)
    assert result.frames is None
    assert [len(p) for p in pieces] == [1] + [4] * 6  # Wan: latent 0 holds one frame, each later one four
    assert np.array_equal(np.concatenate(pieces), whole)


@pytest.mark.parametrize(("family", "sizes"), [("wan", [1, 4, 4]), ("cogvideox", [9])])
def test_an_ordinary_request_streams_the_same_frames_as_its_batched_decode(family, sizes, engines, make_request):
    request = make_request(family, "ordinary-stream", prompt="a streamed short clip")
    whole = engines[family].generate([request])[0].frames
    pieces: list[np.ndarray] = []
    assert engines[family].submit(request, on_frames=pieces.append).result(timeout=120).frames is None
    assert [len(p) for p in pieces] == sizes  # Wan streams per latent frame, the others in one piece
    assert np.array_equal(np.concatenate(pieces), whole)


def test_a_finished_video_is_continued_from_its_latents(long_engines, long_specs, make_request):
    spec, engine = long_specs["wan"], long_engines["wan"]
    first = engine.generate([make_request("wan", "first", prompt="a video to extend", num_frames=9, seed=2)])[0]
    params = {"prompt": "a video to extend, later", "num_frames": 17, "num_inference_steps": 4, "seed": 3}
    extend = spec.resolve("ext", params, context=first.latents)
    assert extend.long_video.method == CONTINUATION
    result = engine.generate([extend])[0]
    assert result.frames.shape == (17, 32, 32, 3)
    assert result.latents.shape[2] == 5  # only the new video's latents: the next extend continues from them
    again = engine.generate([replace(extend, id="ext2")])[0]
    assert np.array_equal(again.frames, result.frames)  # the context fully determines the continuation


@pytest.mark.parametrize("family", ["ltx", "mochi"])
def test_a_finished_video_of_another_family_is_continued_with_only_its_new_frames(
    family, long_engines, long_specs, make_request
):
    spec, engine = long_specs[family], long_engines[family]
    first = engine.generate([make_request(family, "first", prompt="a clip to extend", num_frames=WINDOW[family])])[0]
    params = {"prompt": "later", "num_frames": WINDOW[family], "num_inference_steps": 2, "seed": 3}
    result = engine.generate([spec.resolve("ext", params, context=first.latents)])[0]
    assert result.frames.shape == (WINDOW[family], 32, 32, 3) and np.isfinite(result.frames).all()


def test_continuing_latents_of_another_shape_is_refused_naming_context(long_engines, long_specs, make_request):
    spec = long_specs["wan"]
    wrong = torch.zeros(1, 4, 3, 8, 8)  # the tiny Wan's latents of 128 x 128 pixels, not 32 x 32
    request = spec.resolve("ext", {"prompt": "p", "num_frames": 9}, context=wrong)
    with pytest.raises(InvalidRequest) as error:
        long_engines["wan"].submit(request)
    assert error.value.field == "context"


def test_segment_prompts_change_the_later_frames_only_where_they_hold(long_engines, long_specs, make_request):
    engine = long_engines["wan"]
    base = long_request(long_specs["wan"], "wan", CONTINUATION, make_request, prompt="a story begins", seed=6)
    plain = engine.generate([base])[0].frames
    story = engine.generate([replace(base, id="story", segments=((13, "the story turns"),))])[0].frames
    assert np.array_equal(story[:9], plain[:9])  # the first chunk (frames 0-8) runs on the first prompt
    assert not np.allclose(story[13:], plain[13:])


def test_colour_matching_gives_later_chunks_the_first_chunks_latent_statistics(long_engines, long_specs, make_request):
    engine = long_engines["wan"]
    settings = replace(long_specs["wan"].long_video, method=CONTINUATION, color_match=1.0)
    request = long_request(long_specs["wan"], "wan", CONTINUATION, make_request, "matched", long_video=settings)
    plain = engine.generate([replace(request, id="plain", long_video=replace(settings, color_match=0.0))])[0]
    matched = engine.generate([request])[0]

    def stats(latents, frames):  # per channel over the frames, height and width of (1, C, F, H, W)
        part = latents[:, :, frames]
        return part.mean(dim=(0, 2, 3, 4)), part.std(dim=(0, 2, 3, 4))

    # Seven latent frames in chunks at 0, 2 and 4 of three frames: the last chunk's new frames are 5 and 6.
    first, last = stats(matched.latents, slice(0, 3)), stats(matched.latents, slice(5, 7))
    for want, have in zip(first, last, strict=True):
        torch.testing.assert_close(have, want, atol=1e-4, rtol=1e-4)
    plain_last = stats(plain.latents, slice(5, 7))
    assert not torch.allclose(plain_last[0], first[0], atol=1e-4)  # unmatched, the statistics differ


# The most frames one streamed piece holds, per family (engine/vae.py): Wan one latent frame; CogVideoX two latent
# frames (the first piece three); Mochi two latent frames of six; LTX and HunyuanVideo a temporal tile's stride,
# the first one frame more. None depends on the video's length.
PIECE = {"wan": 4, "cogvideox": 9, "mochi": 12, "ltx": 9, "hunyuanvideo": 13}
# Streamed vs the one-call decode of the same latent: the same operations in Wan, CogVideoX and HunyuanVideo (whose
# VAE decodes long latents in these temporal tiles itself); Mochi's convolutions run over shorter inputs (measured
# 3e-7). LTX's temporal tiles do not see each other: they are its VAE's own framewise decoding, and on the tiny
# model's random weights differ from its one-call decode by up to 0.83 (mean 0.12), so LTX is held to the former.
STREAM_TOLERANCE = {"wan": 0.0, "cogvideox": 0.0, "hunyuanvideo": 0.0, "mochi": 1e-6, "ltx": 1e-6}


def _whole_decode(engine: Engine, request, latents: torch.Tensor) -> np.ndarray:
    """The adapter's one-call decode of the full latent (the path of ordinary requests)."""
    seq = Sequence(request=request, future=Future(), generator=torch.Generator(), extra={"additional_frames": 0})
    return engine.adapter.decode(latents, [seq])[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_streams_a_long_video_in_bounded_pieces_equal_to_its_whole_decode(
    family, long_engines, long_specs, make_request
):
    engine = long_engines[family]
    request = long_request(
        long_specs[family], family, WINDOWS, make_request, prompt=f"streamed {family}", num_inference_steps=2
    )
    pieces: list[np.ndarray] = []
    result = engine.submit(request, on_frames=pieces.append).result(timeout=300)
    assert result.frames is None
    assert len(pieces) >= 2 and max(len(p) for p in pieces) <= PIECE[family]  # bounded, whatever the length
    streamed = np.concatenate(pieces)
    vae = engine.adapter.vae
    if family == "ltx":  # its VAE's own framewise decoding: the temporal tiles streamed
        vae.use_framewise_decoding = True
    try:
        whole = _whole_decode(engine, request, result.latents)
    finally:
        if family == "ltx":
            vae.use_framewise_decoding = False
    assert streamed.shape == whole.shape == (LONG[family], 32, 32, 3)
    assert float(np.abs(streamed - whole).max()) <= STREAM_TOLERANCE[family]


def test_wan_packed_forward_gives_each_latent_frame_its_own_timestep_as_diffusers_per_token_timesteps(engines):
    adapter = engines["wan"].adapter
    model = adapter.transformer
    packed = adapter.packed_forward(model)
    assert adapter.embeds_frame_timesteps()
    text, other = adapter.encode_prompts(["a continued clip", "a batch mate"])
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn((16, 3, 4, 4), generator=generator)
    frame_timesteps = torch.tensor([0.0, 0.0, 700.0])  # two clean context frames, one new frame at t = 700
    mate = PackedRow(latents=torch.randn((16, 2, 4, 6), generator=generator), timestep=torch.tensor(300.0), text=other)
    rows = [mate, PackedRow(latents=latents, timestep=frame_timesteps, text=text), mate]
    with torch.no_grad():
        state = packed.embed(rows)
        for index in range(packed.num_blocks):
            state = packed.block(index, state)
        outputs = packed.head(state)
        # diffusers' Wan takes a timestep per token, (B, tokens) as for Wan 2.2 TI2V: a frame's 2 x 2 patches share it.
        reference = model(
            hidden_states=latents[None],
            timestep=frame_timesteps.repeat_interleave(4)[None],
            encoder_hidden_states=text.embeds,
            return_dict=False,
        )[0]
        at_700 = model(
            hidden_states=latents[None], timestep=torch.tensor([700.0]), encoder_hidden_states=text.embeds
        ).sample
        mate_alone = model(
            hidden_states=mate.latents[None], timestep=mate.timestep[None], encoder_hidden_states=other.embeds
        ).sample
    assert float((outputs[1] - reference).abs().max()) <= 1e-5
    assert float((outputs[1] - at_700).abs().max()) > 1e-2  # the context frames' timestep changed the prediction
    for output in (outputs[0], outputs[2]):
        assert float((output - mate_alone).abs().max()) <= 1e-5


def test_a_wan_continuation_runs_its_context_frames_clean_at_timestep_0(
    long_engines, long_specs, make_request, monkeypatch
):
    engine = long_engines["wan"]
    packed = engine.adapter.packed_forward(engine.adapter.transformer)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    embed = packed.embed

    def recording(rows):
        seen.extend((row.timestep.clone(), row.latents.clone()) for row in rows[:1])  # the conditional row
        return embed(rows)

    monkeypatch.setattr(packed, "embed", recording)
    request = long_request(long_specs["wan"], "wan", CONTINUATION, make_request, "context", prompt="clean context")
    result = engine.generate([request])[0]
    # Seven latent frames in chunks at 0, 2 and 4 of three frames, four steps each; chunks 2 and 3 start from the
    # previous chunk's last latent frame.
    assert len(seen) == 12
    assert all(timestep.dim() == 0 for timestep, _ in seen[:4])
    for k, (timestep, latents) in enumerate(seen[4:]):
        assert timestep.shape == (3,) and timestep[0] == 0 and bool((timestep[1:] > 0).all()), k
        start = 2 if k < 4 else 4
        assert torch.equal(latents[:, :, 0], result.latents[:, :, start].to(latents.dtype)), k
