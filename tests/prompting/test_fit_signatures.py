"""Every classifier that trains itself (`fit`, outside the shared loop or around it) takes the loop's `on_epoch`
callback, which models.experiments.training passes to every fit: the composed R-AMT + Tip-Adapter once did not, and
its pipeline partitions failed with a TypeError while its unit tests, which called fit directly, passed."""

import importlib
import inspect
import pkgutil

import models.prompting.methods as methods_package
from models.prompting.methods.registry import PromptedClassifier


def classifiers_with_fit():
    for module_info in pkgutil.iter_modules(methods_package.__path__):
        module = importlib.import_module(f"{methods_package.__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, PromptedClassifier) and cls is not PromptedClassifier and "fit" in vars(cls):
                yield cls


def test_every_fit_takes_the_loops_on_epoch_callback():
    found = {cls.__name__: inspect.signature(cls.fit).parameters for cls in classifiers_with_fit()}
    assert {"RAMTClassifier", "TipAdapterFClassifier", "BlackVIPClassifier"} <= set(found), sorted(found)
    missing = sorted(name for name, parameters in found.items() if "on_epoch" not in parameters)
    assert missing == [], f"fit without on_epoch: {missing}"
