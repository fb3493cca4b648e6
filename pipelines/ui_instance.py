"""Prepare the Dagster instance for the UI (`make ui` and the browser tests run `python -m pipelines.ui_instance`
before `dagster dev`): DAGSTER_HOME with the project's dagster.yaml (pipelines/dagster_home_template.yaml), and the
UI's automation switch set to what the project does.

Why the switch: a job page shows "Auto-materialize off" whenever the instance's pre-sensor auto-materialize flag is
unset, although that flag no longer governs anything here: automation conditions are evaluated by automation
sensors (`auto_materialize.use_sensors`, Dagster's default), and checkpoint_evaluation_sensor runs from the start
(pipelines/sensors.py). Setting the flag to "on" makes the header say what happens; stopping that sensor in the UI
(Automation) is how evaluations are turned off.
"""

from __future__ import annotations


def prepare_ui_instance() -> str:
    """Install dagster.yaml when missing and mark automation as running; returns DAGSTER_HOME."""
    import dagster as dg
    from dagster._daemon.asset_daemon import set_auto_materialize_paused  # the flag the UI's header reads

    from pipelines.cli import ensure_dagster_home

    home = ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        if not instance.auto_materialize_use_sensors:
            raise RuntimeError(f"{home}/dagster.yaml turns auto_materialize.use_sensors off: the checkpoint "
                               "evaluation sensor would not run")
        set_auto_materialize_paused(instance, False)
    return str(home)


if __name__ == "__main__":
    print(f"Dagster instance ready for the UI: {prepare_ui_instance()}")
