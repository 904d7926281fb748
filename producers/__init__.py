"""The synthetic messaging simulator and its sinks (JSON lines, Kafka).

``Simulator`` is the pure, seeded model; ``run_producer`` paces it into a sink;
``producers.cli`` wires both to command-line options.
"""

from producers.profile import SimulationProfile
from producers.run import ProduceReport, run_producer
from producers.simulator import Simulator
from producers.sinks import JsonlSink, KafkaSink

__all__ = [
    "JsonlSink",
    "KafkaSink",
    "ProduceReport",
    "SimulationProfile",
    "Simulator",
    "run_producer",
]
