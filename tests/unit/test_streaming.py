import pytest

from pipeline.streaming import chunk_count, covered_frames, latent_frames, plan_chunks


@pytest.mark.parametrize(
    ("frames", "chunks"), [(1, 1), (81, 1), (82, 2), (125, 2), (153, 2), (154, 3), (250, 4)]
)
def test_chunk_count(frames, chunks):
    assert chunk_count(frames) == chunks


def test_chunks_overlap_by_nine_motion_frames_and_cover_the_request():
    chunks = plan_chunks(250)
    assert [(c.start, c.end, c.keep_from) for c in chunks] == [
        (0, 81, 0),
        (72, 153, 9),
        (144, 225, 9),
        (216, 297, 9),
    ]
    new_frames = sum(81 - c.keep_from for c in chunks)
    assert new_frames == covered_frames(250) == 297 >= 250


def test_latent_frame_counts():
    assert latent_frames(81) == 21
    assert latent_frames(9) == 3


def test_non_positive_frames_rejected():
    with pytest.raises(ValueError):
        chunk_count(0)
