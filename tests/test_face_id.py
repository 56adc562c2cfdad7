"""Face verification descriptors on real corpus clips: the enrolled person's other
recording is nearer than other people, the same frame always gives the same vector, and
missing or corrupt model files are one-line errors.

A few frames per clip (every 10th decoded frame, at most 8), so the module stays fast:
about 80 ms of dlib per face on one core.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from expose.monitor.errors import AssetError, ConfigError
from expose.monitor.features import embedding
from expose.monitor.features.embedding import (
    Embedder,
    IsolatedEmbedder,
    create_embedder,
    farthest_point_order,
    reference_distances,
)
from expose.monitor.features.expressions import EXPRESSION_DIM, ExpressionExtractor
from expose.monitor.features.face_id import (
    DESCRIPTOR_FILE,
    PITCH,
    PREDICTOR_FILE,
    YAW,
    DlibFaceEmbedder,
    FaceSample,
    face_distances,
    resolve_face_id_models,
    sample_faces,
    select_face_references,
)
from expose.monitor.media.reader import MediaReader, VideoFrame

if TYPE_CHECKING:
    from tests.conftest import Clip

ENROLL = "real/trump/speech_01.mp4"
GENUINE = "real/trump/clip_02.mp4"  # another recording of the same person
# conan_obrien: of all corpus identities, the nearest to trump (0.59 here, trump's other recordings 0.46-0.48)
IMPOSTORS = ["real/conan_obrien/conan_obrien.mp4", "real/macron/speech_01.mp4", "real/reagan/reagan_clip1.mp4"]
SESSION_1 = "real/vidtimit_fadg0/s1_si1909.mp4"
SESSION_3 = "real/vidtimit_fadg0/s3_sx289.mp4"
# grid_rz_lwbsza: the corpus identity nearest to vidtimit_fadg0 (0.53 here, session 3 0.32)
SESSION_IMPOSTORS = ["real/grid_rz_lwbsza/lwbsza.mpg", "real/ocasio_cortez/hdtf_000.mp4"]

Faces = tuple[list[FaceSample], np.ndarray]  # samples, (N, 58) expression vectors


def _faces(path: Path, face_model: Path, n: int, stride: int = 10) -> Faces:
    """Up to ``n`` faces from every ``stride``-th decoded frame of ``path``."""
    samples, expressions = sample_faces(path, face_model, n, stride)
    assert samples, f"no face found in {path}"
    return samples, expressions


@pytest.fixture(scope="module")
def embedder() -> DlibFaceEmbedder:
    return DlibFaceEmbedder()


@pytest.fixture(scope="module")
def faces(clip: Clip, face_model: Path) -> dict[str, Faces]:
    """Faces of each clip this module uses, extracted once (8 per enrollment, 4 per probe)."""
    wanted = {ENROLL: 8, SESSION_1: 8, GENUINE: 4, SESSION_3: 4}
    wanted.update({p: 4 for p in IMPOSTORS + SESSION_IMPOSTORS})
    return {rel: _faces(clip(rel), face_model, n) for rel, n in wanted.items()}


def _clip_distance(embedder: DlibFaceEmbedder, refs: np.ndarray, probe: Faces) -> float:
    """A clip's distance to the references: the median over its faces (as a window would)."""
    return float(np.median(face_distances(embedder.embed(probe[0]), refs)))


def _references(embedder: DlibFaceEmbedder, enroll: Faces) -> np.ndarray:
    samples, expressions = enroll
    descriptors = embedder.embed(samples)
    keep = select_face_references(expressions[:, [YAW, PITCH]], k=6)
    return descriptors[keep]


def test_other_recording_of_the_enrolled_person_is_nearer_than_other_people(
        embedder: DlibFaceEmbedder, faces: dict[str, Faces]) -> None:
    refs = _references(embedder, faces[ENROLL])
    genuine = _clip_distance(embedder, refs, faces[GENUINE])
    impostors = {p: _clip_distance(embedder, refs, faces[p]) for p in IMPOSTORS}
    assert all(genuine < d for d in impostors.values()), (genuine, impostors)
    # and by a margin, not a coin flip: dlib's own same-person threshold is 0.6
    assert genuine < 0.5 < min(impostors.values()), (genuine, impostors)


def test_another_recording_session_is_nearer_than_another_person(
        embedder: DlibFaceEmbedder, faces: dict[str, Faces]) -> None:
    refs = _references(embedder, faces[SESSION_1])
    genuine = _clip_distance(embedder, refs, faces[SESSION_3])
    impostors = {p: _clip_distance(embedder, refs, faces[p]) for p in SESSION_IMPOSTORS}
    assert genuine < 0.5 < min(impostors.values()), (genuine, impostors)


def test_the_same_face_always_gives_the_same_vector(embedder: DlibFaceEmbedder, faces: dict[str, Faces]) -> None:
    samples = faces[GENUINE][0]
    once = embedder.embed(samples[:1])
    assert once.shape == (1, 128) and once.dtype == np.float32
    assert np.array_equal(once, embedder.embed(samples[:1]))
    # batched with other faces, or with itself, it is still the same vector
    batch = embedder.embed([samples[0], *samples[1:3], samples[0]])
    assert np.array_equal(batch[0], once[0]) and np.array_equal(batch[-1], once[0])
    # a view that is not C-contiguous (dlib's bindings reject those) gives the same vector
    view = FaceSample(np.asfortranarray(samples[0].image), samples[0].landmarks)
    assert np.array_equal(embedder.embed([view]), once)
    # a second embedder built from the same files agrees bit for bit
    assert np.array_equal(DlibFaceEmbedder().embed(samples[:1]), once)


def test_the_worker_process_gives_the_same_vectors_and_survives_a_killed_worker(
        embedder: DlibFaceEmbedder, faces: dict[str, Faces], tmp_path: Path) -> None:
    samples = faces[GENUINE][0][:3]
    isolated = IsolatedEmbedder("face", "dlib-resnet")
    assert isinstance(isolated, Embedder) and (isolated.name, isolated.dim) == ("dlib-resnet", 128)
    here = embedder.embed(samples)
    assert np.array_equal(isolated.embed(samples), here)
    # the worker dies (out of memory, killed): the next call restarts it and still answers
    pool = embedding._shared_pool()
    os.kill(pool.submit(os.getpid).result(), signal.SIGKILL)
    assert np.array_equal(isolated.embed(samples[:1]), here[:1])
    assert embedding._shared_pool() is not pool
    # missing model files and unknown names fail as they do in-process: one line
    with pytest.raises(AssetError) as err:
        IsolatedEmbedder("face", "dlib-resnet", models_dir=tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(ConfigError, match="dlib-resnet"):
        IsolatedEmbedder("face", "no-such-net")


def test_observe_gives_the_expression_process_gives_plus_landmarks(clip: Clip, face_model: Path) -> None:
    images = []
    with MediaReader(str(clip(GENUINE)), require_video=True, require_audio=False) as reader:
        for item in reader.read(max_side=640):
            if isinstance(item, VideoFrame):
                images.append((item.time, item.image))
            if len(images) == 6:
                break
    with ExpressionExtractor(face_model) as a, ExpressionExtractor(face_model) as b:
        for t, image in images:
            expression = a.process(image, t)
            obs = b.observe(image, t)
            assert expression is not None and obs is not None
            assert np.array_equal(obs.expression, expression) and obs.expression.shape == (EXPRESSION_DIM,)
            h, w = image.shape[:2]
            assert obs.landmarks.shape == (478, 2)
            # pixels of this frame (a face may reach a little past its edge), not [0, 1]
            assert (obs.landmarks.min(axis=0) > -0.1 * np.array([w, h])).all()
            assert (obs.landmarks.max(axis=0) < 1.1 * np.array([w, h])).all()
            assert np.ptp(obs.landmarks[:, 0]) > 0.1 * w


def test_missing_model_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(AssetError) as err:
        DlibFaceEmbedder(models_dir=tmp_path)
    assert "\n" not in str(err.value) and DESCRIPTOR_FILE in str(err.value) and str(tmp_path) in str(err.value)
    (tmp_path / DESCRIPTOR_FILE).write_bytes(b"x")
    with pytest.raises(AssetError) as err:
        resolve_face_id_models(tmp_path)
    assert "\n" not in str(err.value) and PREDICTOR_FILE in str(err.value)
    (tmp_path / PREDICTOR_FILE).write_bytes(b"not a dlib model")
    with pytest.raises(AssetError) as err:  # present but corrupt
        DlibFaceEmbedder(models_dir=tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_the_package_files_are_found_and_the_registry_builds_by_name() -> None:
    models = resolve_face_id_models()
    assert models.descriptor.name == DESCRIPTOR_FILE and models.predictor.name == PREDICTOR_FILE
    made = create_embedder("face", "dlib-resnet")
    assert isinstance(made, Embedder) and made.name == "dlib-resnet" and made.dim == 128
    with pytest.raises(ConfigError, match="dlib-resnet"):
        create_embedder("face", "no-such-net")


def test_references_spread_over_pose_and_set_distances() -> None:
    # poses on a line plus a frontal one: frontal first, then the two extremes
    poses = np.array([[0.3, 0.0], [0.1, 0.0], [0.0, 0.01], [-0.3, 0.0], [0.2, 0.0]])
    assert select_face_references(poses, k=3).tolist() == [2, 0, 3]
    assert farthest_point_order(np.zeros((4, 2)), 3).tolist() == [0]  # duplicates add nothing
    refs = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], dtype=np.float32)
    probe = np.array([[0.0, 0.0]], dtype=np.float32)
    assert reference_distances(probe, refs, "knn", k=1).tolist() == [0.0]
    assert reference_distances(probe, refs, "knn", k=2).tolist() == [0.5]
    assert reference_distances(probe, refs, "knn", k=9).tolist() == [2.0]  # k > M: all of them
    assert reference_distances(probe, refs, "centroid").tolist() == [2.0]


def test_the_embedder_worker_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    """A process that dies without its exit hooks (SIGKILL, a multiprocessing child) must not
    leave its embedder worker behind."""
    import signal
    import subprocess
    import sys
    import time

    def running(pid: int) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        except OSError:
            return False

    script = ("import os, time\n"
              "from expose.monitor.features.embedding import IsolatedEmbedder, _shared_pool\n"
              "IsolatedEmbedder('face', 'dlib-resnet')\n"
              "print(*[p.pid for p in _shared_pool()._processes.values()], flush=True)\n"
              "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    children = [int(x) for x in parent.stdout.readline().split()]
    assert children
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 15
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [c for c in children if running(c)]
    assert not alive, f"embedder workers {alive} outlived their parent"
