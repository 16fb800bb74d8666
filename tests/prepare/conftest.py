import shutil

import pytest

from pipelines.datasets import synthetic
from pipelines.datasets.synthetic import SyntheticParams

#: the small synthetic dataset most prepare tests use (5 per emotion)
CLIPS = 30


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory):
    """Raw synthetic clips in the CREMA-D layout, generated once per session; treat as read-only
    (tests that damage files take :func:`raw_copy`)."""
    root = tmp_path_factory.mktemp("synthetic-raw")
    params = SyntheticParams(clips=CLIPS)
    for clip in synthetic.claim_root(root, params, synthetic.plan_clips(params)):
        synthetic.write_clip(root, params, clip)
    return root


@pytest.fixture
def raw_copy(synthetic_raw, tmp_path):
    return shutil.copytree(synthetic_raw, tmp_path / "raw")
