"""Which frames of a video or cine loop to use: one rule for MP4/AVI/MOV/GIF files and multi-frame DICOM."""

from __future__ import annotations

__all__ = ["sample_frame_indices"]


def sample_frame_indices(
    num_frames: int, source_fps: float | None, sample_fps: float | None = 3.0, max_frames: int | None = 30
) -> list[int]:
    """Frame indices sampled at ``sample_fps`` frames per second, at most ``max_frames`` of them.

    Frames are taken at times ``0, 1/sample_fps, 2/sample_fps, ...`` (nearest earlier frame). When more than
    ``max_frames`` would be taken, ``max_frames`` of them are kept, evenly spread over the whole clip, so a cap
    never keeps only the start of a video.

    Args:
        num_frames: frames in the clip.
        source_fps: the clip's frame rate; ``None`` or non-positive when unknown (e.g. a GIF without timing):
            then every frame is a candidate, up to the cap.
        sample_fps: frames to take per second; ``None`` takes every frame.
        max_frames: cap per clip; ``None`` for no cap.

    Raises:
        ValueError: ``num_frames`` < 1, or a non-positive ``sample_fps`` / ``max_frames``.
    """
    if num_frames < 1:
        raise ValueError(f"sample_frame_indices: a clip needs at least one frame, got {num_frames}")
    if sample_fps is not None and sample_fps <= 0:
        raise ValueError(f"sample_frame_indices: sample_fps must be positive, got {sample_fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"sample_frame_indices: max_frames must be >= 1, got {max_frames}")
    if sample_fps is None:
        picked = list(range(num_frames))
    else:
        fps = source_fps if source_fps and source_fps > 0 else sample_fps
        step = max(fps / sample_fps, 1.0)  # in frames; never more than every frame
        picked, t = [], 0.0
        while int(t) < num_frames:
            picked.append(int(t))
            t += step
    if max_frames is not None and len(picked) > max_frames:
        if max_frames == 1:
            return [picked[len(picked) // 2]]
        picked = [picked[round(i * (len(picked) - 1) / (max_frames - 1))] for i in range(max_frames)]
    return picked
