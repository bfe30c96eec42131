"""Where the project's tables live. Every table path is derived here and nowhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "IBKR_DATA_DIR"


@dataclass(frozen=True)
class TableLocation:
    """A data directory holding the project's Delta tables, one sub-directory each."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    @classmethod
    def default(cls) -> TableLocation:
        """`$IBKR_DATA_DIR`, or `./data` relative to where the command runs."""
        return cls(Path(os.environ.get(DATA_DIR_ENV, "data")))

    @classmethod
    def at(cls, data_dir: str | None) -> TableLocation:
        """A chosen directory, or the default when none is given (an empty flow parameter, no CLI option)."""
        return cls(Path(data_dir)) if data_dir else cls.default()

    @property
    def bars(self) -> str:
        return str(self.root / "bars")

    @property
    def quarantine(self) -> str:
        return str(self.root / "quarantine")

    @property
    def backtest_results(self) -> str:
        return str(self.root / "backtest_results")

    @property
    def backtest_trades(self) -> str:
        return str(self.root / "backtest_trades")

    @property
    def grid_results(self) -> str:
        return str(self.root / "grid_results")
