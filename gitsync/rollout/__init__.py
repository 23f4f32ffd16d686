"""Rollouts: gitsync follows each publish until the app runs it (CONTRACT, "Rollouts").

probes.py asks the app (gitsync-reload's status API or any health URL); ledger.py keeps
the state on the volume (bad marks, pause, the rollout in progress) and counts results;
tracker.py decides: live, roll back, failed or degraded.
"""

from .ledger import RESULTS, Ledger, RolloutResult
from .probes import HealthProbe, Observation, Probe, StatusProbe, probe_for, same_commit
from .tracker import Decision, Degraded, Failed, Live, Rollback, Rollouts

__all__ = ["RESULTS", "Decision", "Degraded", "Failed", "HealthProbe", "Ledger", "Live", "Observation",
           "Probe", "Rollback", "RolloutResult", "Rollouts", "StatusProbe", "probe_for", "same_commit"]
