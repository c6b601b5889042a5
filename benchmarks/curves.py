"""The learning-curve callback of the benchmark scripts (compare.py, from_scratch.py, suite.py)."""

from collections.abc import Callable

from stable_baselines3.common.callbacks import BaseCallback


class PeriodicEvaluation(BaseCallback):
    """Calls ``evaluate()`` at the first rollout start past each ``eval_every`` (so after the previous update) and once
    more at the end of training if the last evaluation was earlier.

    :param evaluate: Records one point of the curve.
    :param eval_every: Distance between points, in the units of :meth:`clock`.
    :param count_env_steps: Measure ``eval_every`` in underlying env steps (``info["env_steps"]`` of ``ActionChunk``,
        1 per env otherwise; :attr:`env_steps`) instead of ``num_timesteps`` (decisions).
    """

    def __init__(self, evaluate: Callable[[], None], eval_every: int, count_env_steps: bool = False):
        super().__init__()
        self.evaluate, self.eval_every, self.count_env_steps = evaluate, eval_every, count_env_steps
        self.env_steps = 0
        self.next_eval = 0
        self.evaluated_at: int | None = None

    def clock(self) -> int:
        return self.env_steps if self.count_env_steps else self.model.num_timesteps

    def _evaluate(self) -> None:
        self.evaluate()
        self.evaluated_at = self.model.num_timesteps

    def _on_rollout_start(self) -> None:
        if self.clock() >= self.next_eval:
            self._evaluate()
            self.next_eval = self.clock() + self.eval_every

    def _on_step(self) -> bool:
        self.env_steps += sum(int(info.get("env_steps", 1)) for info in self.locals["infos"])
        return True

    def _on_training_end(self) -> None:
        if self.evaluated_at != self.model.num_timesteps:
            self._evaluate()
