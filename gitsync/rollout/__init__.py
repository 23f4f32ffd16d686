"""Rollouts: gitsync follows each publish until the app runs it (CONTRACT, "Rollouts").

probes.py asks the app (gitsync-reload's status API or any health URL); store.py keeps
the state on the volume; tracker.py decides: live, roll back, failed or degraded.
"""

from .probes import HealthProbe, Observation, Probe, StatusProbe, probe_for, same_commit
from .store import Store
from .tracker import Decision, Degraded, Failed, Live, Rollback, RolloutResult, Rollouts

__all__ = ["Decision", "Degraded", "Failed", "HealthProbe", "Live", "Observation", "Probe",
           "Rollback", "RolloutResult", "Rollouts", "StatusProbe", "Store", "probe_for", "same_commit"]
