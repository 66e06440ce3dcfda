"""Label Studio's own validation of tasks, from its SDK (``label-studio-sdk``, dev group)."""

from __future__ import annotations

from typing import Any


def sdk_errors(config: str, tasks: list[dict[str, Any]]) -> list[str]:
    """What label-studio-sdk's LabelInterface finds wrong with ``tasks`` under ``config``.

    The config must pass ``LabelInterface.validate()`` (raises otherwise). Each task must
    carry the data every object tag reads (``$image``), and every annotation and prediction
    must pass ``validate_prediction`` (regions name the config's tags and labels, geometry
    within 0-100 %, a score within 0-1). ``validate_task`` itself is not used: in SDK 2.0.19
    it calls ``validate_annotation()`` without the annotation.
    """
    from label_studio_sdk.label_interface import LabelInterface

    interface = LabelInterface(config)
    interface.validate()
    errors = []
    for number, task in enumerate(tasks):
        for tag in interface.objects:
            if tag.value_is_variable and task["data"].get(tag.value_name) is None:
                errors.append(f"task {number}: no data.{tag.value_name}")
        for kind in ("annotations", "predictions"):
            for item in task.get(kind, []):
                found = interface.validate_prediction(item, return_errors=True)
                errors += [f"task {number} {kind}: {error}" for error in found]
    return errors
