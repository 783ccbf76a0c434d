"""Dataset-scale screening on Ray Data: ``screen()``, the frozen ``ScreeningPlan``, outputs and resume.

See ``docs/pipeline.md``.
"""

from screening.pipeline.outputs import committed_files
from screening.pipeline.plan import ScreeningPlan, build_plan
from screening.pipeline.run import ScreeningResult, execute, screen

__all__ = ["screen", "ScreeningResult", "ScreeningPlan", "build_plan", "execute", "committed_files"]
