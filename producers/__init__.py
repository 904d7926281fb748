"""The synthetic messaging simulator and its sinks (JSON lines, Kafka).

``Simulator`` is the pure, seeded model; ``producers.scenarios`` puts incidents into it
(``build_scenario``); ``run_producer`` paces it into a sink; ``producers.cli`` wires them
to command-line options.
"""

from producers.profile import SimulationProfile
from producers.run import ProduceReport, run_producer
from producers.scenarios import SCENARIO_NAMES, Scenario, build_scenario
from producers.simulator import Simulator
from producers.sinks import JsonlSink, KafkaSink

__all__ = [
    "SCENARIO_NAMES",
    "JsonlSink",
    "KafkaSink",
    "ProduceReport",
    "Scenario",
    "SimulationProfile",
    "Simulator",
    "build_scenario",
    "run_producer",
]
