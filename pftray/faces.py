"""dlib's face models, found offline: the detector, the 68-point landmark predictor and the 128-D face embedder.

The weights ship inside the ``face-recognition-models`` wheel; dlib itself comes from ``dlib-bin``. That
package's ``__init__`` imports ``pkg_resources`` (absent from setuptools >= 81), so its ``models/`` folder is
located with :func:`importlib.util.find_spec` and never imported. ``$PFTRAY_FACE_MODELS`` overrides the folder.

Every loader returns the model or raises :class:`FaceModelsMissing` whose message is the reason (shown by the
metrics as ``Missing(reason)``, and by ``pftray data prepare`` as a one-line error). Models load once per
process.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

from pftray.errors import InputError

LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
LANDMARKS_5 = "shape_predictor_5_face_landmarks.dat"
EMBEDDER = "dlib_face_recognition_resnet_model_v1.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"


class FaceModelsMissing(InputError):
    """dlib or the face-recognition-models weights are not installed (the message says which)."""


def models_dir() -> Path:
    """The folder holding dlib's ``.dat`` model files."""
    env = os.environ.get("PFTRAY_FACE_MODELS")
    if env:
        d = Path(env)
        if not d.is_dir():
            raise FaceModelsMissing(f"PFTRAY_FACE_MODELS={env} is not a folder")
        return d
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelsMissing("face-recognition-models is not installed (pip install face-recognition-models)")
    d = Path(next(iter(spec.submodule_search_locations))) / "models"
    if not d.is_dir():
        raise FaceModelsMissing(f"face-recognition-models has no models/ folder at {d}")
    return d


def _dlib():
    try:
        import dlib
    except ImportError as err:
        raise FaceModelsMissing(f"dlib is not installed (pip install dlib-bin): {err}") from err
    return dlib


def _model_file(name: str) -> str:
    path = models_dir() / name
    if not path.is_file():
        raise FaceModelsMissing(f"face model file {name} not found in {path.parent}")
    return str(path)


def available() -> str | None:
    """``None`` when the landmark predictor and the embedder can be loaded, else the reason they cannot."""
    try:
        _dlib()
        _model_file(LANDMARKS_68)
        _model_file(EMBEDDER)
    except FaceModelsMissing as err:
        return str(err)
    return None


@functools.cache
def hog_detector():
    """dlib's HOG + linear SVM frontal face detector (fast on CPU; faces of about 80 px and larger)."""
    return _dlib().get_frontal_face_detector()


@functools.cache
def cnn_detector():
    """dlib's MMOD CNN face detector (slower; finds smaller and more turned faces)."""
    return _dlib().cnn_face_detection_model_v1(_model_file(CNN_DETECTOR))


@functools.cache
def landmark_predictor():
    """The 68-point iBUG-300W landmark predictor (``dlib.shape_predictor``)."""
    return _dlib().shape_predictor(_model_file(LANDMARKS_68))


@functools.cache
def face_embedder():
    """dlib's ResNet face embedder: 128-D descriptors (99.38 % on LFW, as its authors report)."""
    return _dlib().face_recognition_model_v1(_model_file(EMBEDDER))


def rectangle(x0: float, y0: float, x1: float, y1: float):
    """A ``dlib.rectangle`` from float pixel bounds (rounded)."""
    return _dlib().rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
