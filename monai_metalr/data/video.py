"""Read frames of ultrasound clips: MP4 / AVI / MOV through PyAV, animated GIF through Pillow.

Both readers decode the clip once, from the start, and keep only the requested frames, so a frame index means the
same frame in either reader (no seeking, whose accuracy depends on the container's keyframes). Every error names the
file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from .paths import stat_file

__all__ = ["VIDEO_EXTENSIONS", "read_video_frames", "video_frame_info"]

#: File endings (compared case-insensitively) read as videos; ``.gif`` is read with Pillow, the rest with PyAV.
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".gif")


def _check_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` after checking that it is a non-empty file."""
    p = Path(path).expanduser()
    st = stat_file(p, "video file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{p}: not a file")
    if st.st_size == 0:
        raise ValueError(f"{p}: empty file (0 bytes), not a video")
    return p


def _is_gif(path: Path) -> bool:
    return path.suffix.lower() == ".gif"


def _not_video(path: Path, err: BaseException) -> ValueError:
    return ValueError(f"{path}: not a decodable video ({type(err).__name__}: {err})")


# ---------------------------------------------------------------------------------------------------------------------
# GIF (Pillow)


def _open_gif(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _not_video(path, e) from e


def _gif_info(path: Path) -> tuple[int, float | None]:
    with _open_gif(path) as im:
        try:
            durations = []
            for frame in ImageSequence.Iterator(im):
                durations.append(frame.info.get("duration"))
        except (OSError, ValueError, EOFError) as e:
            raise _not_video(path, e) from e
    n = len(durations)
    if n == 0:
        raise ValueError(f"{path}: GIF without frames")
    # frame durations are in milliseconds; a missing or zero duration means the timing is unknown
    if all(isinstance(d, (int, float)) and d > 0 for d in durations):
        return n, n / (sum(durations) / 1000.0)
    return n, None


def _gif_frames(path: Path, wanted: set[int], last: int) -> tuple[dict[int, np.ndarray], int]:
    """``({index: frame}, frames visited)``; stops after frame ``last``."""
    found: dict[int, np.ndarray] = {}
    count = 0
    with _open_gif(path) as im:
        try:
            for frame in ImageSequence.Iterator(im):
                if count in wanted:
                    found[count] = np.asarray(frame.convert("RGB"), dtype=np.uint8).copy()
                count += 1
                if count > last:
                    break
        except (OSError, ValueError, EOFError) as e:
            raise _not_video(path, e) from e
    return found, count


# ---------------------------------------------------------------------------------------------------------------------
# MP4 / AVI / MOV (PyAV)


def _open_av(path: Path):  # -> (container, stream)
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise _not_video(path, e) from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: no video stream in the file")
    return container, container.streams.video[0]


def _rate(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and Fraction(rate) > 0:
            return float(rate)
    if stream.frames and stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
        if seconds > 0:
            return stream.frames / seconds
    return None


def _av_decode(path: Path, wanted: set[int], last: int | None) -> tuple[dict[int, np.ndarray], int, int]:
    """``({index: frame}, frames decoded, frame count in the header or 0)``; decodes up to frame ``last`` (every
    frame when ``None``)."""
    import av

    found: dict[int, np.ndarray] = {}
    count = 0
    container, stream = _open_av(path)
    header_frames = int(stream.frames or 0)
    try:
        for frame in container.decode(video=0):
            if count in wanted:
                found[count] = frame.to_ndarray(format="rgb24")
            count += 1
            if last is not None and count > last:
                break
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise _not_video(path, e) from e
    finally:
        container.close()
    if count == 0:
        raise ValueError(f"{path}: not a decodable video (no frame could be decoded)")
    return found, count, header_frames


# ---------------------------------------------------------------------------------------------------------------------
# public API


def video_frame_info(path: str | os.PathLike, count_by_decoding: bool = False) -> tuple[int, float | None]:
    """Number of frames and frame rate of a video or animated GIF.

    For MP4 / AVI / MOV (PyAV) the count comes from the container header when it has one; when it does not (or
    ``count_by_decoding``), every frame is decoded and counted. For GIFs (Pillow) every frame is visited, and the
    rate is the number of frames over the sum of the per-frame durations.

    Args:
        path: the video file.
        count_by_decoding: count MP4 / AVI / MOV frames by decoding even when the header states a count (headers
            can be wrong, e.g. after an edit list).

    Returns:
        ``(num_frames, fps)``; ``fps`` is ``None`` when the file does not tell (e.g. a GIF without frame durations).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is empty (0 bytes), has no video stream, or cannot be decoded. Each message names the file.
    """
    p = _check_file(path)
    if _is_gif(p):
        return _gif_info(p)
    container, stream = _open_av(p)
    try:
        num_frames, fps = int(stream.frames or 0), _rate(stream)
    finally:
        container.close()
    if num_frames <= 0 or count_by_decoding:
        _, num_frames, _ = _av_decode(p, set(), None)
    return num_frames, fps


def read_video_frames(path: str | os.PathLike, indices: Sequence[int]) -> list[np.ndarray]:
    """Decode the frames at ``indices`` of a video or animated GIF, reading the file once from the start.

    Args:
        path: an MP4 / AVI / MOV file (decoded with PyAV) or a GIF (decoded with Pillow; palette and transparency
            resolved by converting each frame to RGB).
        indices: 0-based frame indices, in any order, repeats allowed.

    Returns:
        one ``uint8`` array of shape ``(H, W, 3)`` (RGB) per entry of ``indices``, in the same order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is empty, has no video stream or cannot be decoded; a negative index.
        IndexError: an index at or beyond the clip's last frame (the message gives the number of frames, and the
            header's count when that is larger: a truncated file).
        Each message names the file.
    """
    p = _check_file(path)
    idx = [int(i) for i in indices]
    if not idx:
        return []
    if min(idx) < 0:
        raise ValueError(f"{p}: frame indices must be >= 0, got {min(idx)}")
    wanted, last = set(idx), max(idx)
    if _is_gif(p):
        (found, count), header_frames = _gif_frames(p, wanted, last), 0
    else:
        found, count, header_frames = _av_decode(p, wanted, last)
    missing = sorted(wanted - found.keys())
    if missing:  # decoding stopped before ``last``: ``count`` is the clip's length
        hint = ""
        if header_frames > count:
            hint = f" (its header says {header_frames} frames: the file is probably truncated or damaged)"
        raise IndexError(f"{p}: has {count} frames, frame index {missing[0]} is beyond the end{hint}")
    return [found[i] for i in idx]
