"""Dataset-scale screening on Ray Data: ``screen()``, the checked ``RunConfig``, the resolved ``ScreeningPlan``,
outputs and resume.

See ``docs/pipeline.md``.
"""

from screening.pipeline.config import RunConfig
from screening.pipeline.outputs import committed_files
from screening.pipeline.plan import ScreeningPlan, build_plan
from screening.pipeline.run import ScreeningResult, execute, screen, screen_config

__all__ = ["screen", "screen_config", "RunConfig", "ScreeningResult", "ScreeningPlan", "build_plan", "execute",
           "committed_files"]
