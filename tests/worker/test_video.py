"""MP4 encoding: H.264 in yuv420p with the index first, decoding back to the frames that went in, whether they
come as one array or streamed in chunks from another thread."""

from __future__ import annotations

import io
import threading

import av
import numpy as np
import pytest

from worker.video import EncodedVideo, FrameStream, StreamAborted, decode_mp4, encode_mp4


def gradient(frames: int, height: int, width: int) -> np.ndarray:
    # Red follows time, green the row, blue the column: smooth, so H.264 keeps it close.
    shape = (frames, height, width)
    t = np.broadcast_to(np.linspace(0, 1, frames)[:, None, None], shape)
    y = np.broadcast_to(np.linspace(0, 1, height)[None, :, None], shape)
    x = np.broadcast_to(np.linspace(0, 1, width)[None, None, :], shape)
    return (np.stack([t, y, x], axis=-1) * 255).round().astype(np.uint8)


def assert_same_video(streamed: EncodedVideo, whole: EncodedVideo) -> None:
    """Frames streamed in chunks decode like the whole array encoded at once. Not byte equality: once in CI the two
    encodings of the same frames differed in a few frames' sizes (x264 runs threads); on average they must still
    decode within a grey level of each other, far below what a lost, doubled or reordered frame makes."""
    got, want = decode_mp4(streamed.data).astype(np.int16), decode_mp4(whole.data).astype(np.int16)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() <= 1.0


def test_encoded_video_decodes_to_the_same_frame_count_and_size() -> None:
    frames = gradient(9, 32, 48)
    video = encode_mp4(frames, fps=8)
    decoded = decode_mp4(video.data)
    assert decoded.shape == (9, 32, 48, 3)
    assert (video.num_frames, video.height, video.width, video.fps) == (9, 32, 48, 8)
    # Lossy, but close: a smooth gradient survives H.264 at the default quality.
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 3


def test_stream_is_h264_yuv420p_at_the_requested_fps() -> None:
    video = encode_mp4(gradient(5, 32, 32), fps=12)
    with av.open(io.BytesIO(video.data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 12


def test_index_comes_before_the_media_data_for_progressive_playback() -> None:
    data = encode_mp4(gradient(9, 32, 32), fps=8).data
    assert 0 < data.find(b"moov") < data.find(b"mdat")


def test_odd_dimensions_are_padded_to_even_not_scaled() -> None:
    frames = gradient(5, 33, 31)
    video = encode_mp4(frames, fps=8)
    decoded = decode_mp4(video.data)
    assert decoded.shape == (5, 34, 32, 3)
    assert (video.height, video.width) == (34, 32)


def test_a_single_frame_makes_a_one_frame_video() -> None:
    assert decode_mp4(encode_mp4(gradient(1, 16, 16), fps=8).data).shape == (1, 16, 16, 3)


@pytest.mark.parametrize(
    "frames",
    [np.zeros((4, 16, 16), np.uint8), np.zeros((4, 16, 16, 3), np.float32), np.zeros((0, 16, 16, 3), np.uint8)],
)
def test_malformed_frames_are_rejected(frames: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_mp4(frames, fps=8)


def test_frames_streamed_in_chunks_encode_like_the_whole_array() -> None:
    frames = gradient(9, 32, 48)
    chunks = iter([frames[:1], frames[1:5], frames[5], frames[6:]])  # a streaming decode: 1, 4, single frames

    streamed = encode_mp4(chunks, fps=8)

    assert streamed.num_frames == 9
    assert_same_video(streamed, encode_mp4(frames, fps=8))


def test_a_frame_stream_is_read_in_order_until_closed_on_another_thread() -> None:
    frames = gradient(9, 16, 16)
    stream = FrameStream()
    encoded: list[EncodedVideo] = []
    encoder = threading.Thread(target=lambda: encoded.append(encode_mp4(stream, fps=8)))
    encoder.start()
    for start in range(0, 9, 4):
        stream.put(frames[start : start + 4])
    stream.close()
    encoder.join(30)

    assert encoded and encoded[0].num_frames == 9
    assert_same_video(encoded[0], encode_mp4(frames, fps=8))


def test_an_aborted_frame_stream_stops_its_encoder() -> None:
    stream = FrameStream()
    stream.put(gradient(4, 16, 16))
    stream.abort()
    with pytest.raises(StreamAborted):
        encode_mp4(stream, fps=8)


def test_frames_of_different_sizes_in_one_stream_are_rejected() -> None:
    with pytest.raises(ValueError):
        encode_mp4(iter([gradient(2, 16, 16), gradient(2, 16, 32)]), fps=8)
