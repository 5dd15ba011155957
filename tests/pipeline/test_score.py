"""``dp4tl score``'s own checks (:mod:`ffcv_dp4tl.pipeline.score`), before any work."""
from __future__ import annotations

import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline.score import score


@pytest.mark.parametrize("kw,needle", [
    ({"resolution": 0}, "--resolution"),  # 0 is not "the default": omitting the option is
    ({"resolution": -5}, "--resolution"),
    ({"resolution": 100000}, "--resolution"),  # a torch allocation traceback before
    ({"target_resolution": 100000}, "--target-resolution"),
    ({"target_resolution": -1}, "--target-resolution"),
])
def test_impossible_resolutions_are_refused_before_work(tmp_path, kw, needle):
    out = tmp_path / "scores"
    with pytest.raises(DP4TLError, match=rf"^{needle}.* must be an integer number of pixels "
                                         r"from [01] to \d+"):
        score("lm", source_dir=tmp_path / "no_source", out_dir=out, target_dir=tmp_path / "t",
              checkpoint=tmp_path / "c.pt", **kw)
    assert not out.exists()
