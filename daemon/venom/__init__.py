"""The control loop ("venom"): a T_Λ-clocked arbiter with four cores.

Each beat counts the anomalies the daemon observed, runs the four cores
(R regen, B balance, E entropy, O optimize) on the same inputs, weighs them
with the genome into a decision vector, decides (QUARANTINE, ALERT,
APPLY_BALANCE, APPLY_OPTIMIZE, NOOP), acts through the governor, records the
decision in the ledger and pushes it to subscribers; then the PID
recalibrates the genome.  The pure parts (pulse, cores, genome, arbiter)
do no I/O; `engine` is the loop, `unit` the daemon's part, `standalone` the
`aal-core venom` command.  Never imports torch.
"""
from .anomalies import Anomalies, AnomalyCounter
from .arbiter import Arbiter, BeatResult
from .cores import BeatInputs, CoreOutputs
from .entropy import EntropyParams, ModelError, load_model, sigmoid
from .genome import Action, DecisionVector, Genome, decide, decision_vector, recalibrate
from .pulse import PulseError, t_lambda

__all__ = ["Action", "Anomalies", "AnomalyCounter", "Arbiter", "BeatInputs", "BeatResult",
           "CoreOutputs", "DecisionVector", "EntropyParams", "Genome", "ModelError", "PulseError",
           "decide", "decision_vector", "load_model", "recalibrate", "sigmoid", "t_lambda"]
