"""Prompt-learning methods: one module each, all registered in `registry`."""

from models.prompting.methods.registry import METHODS, MethodSpec, get_method, parse_method_parameters

# Importing a method module registers it.
from models.prompting.methods import coop, zero_shot  # noqa: F401,E402
from models.prompting.methods import kgcoop  # noqa: F401,E402
from models.prompting.methods import cocoop  # noqa: F401,E402
from models.prompting.methods import maple  # noqa: F401,E402
from models.prompting.methods import prograd  # noqa: F401,E402
from models.prompting.methods import vpt, ivlp, promptsrc  # noqa: F401,E402
from models.prompting.methods import linear_probe  # noqa: F401,E402
from models.prompting.methods import pre  # noqa: F401,E402
from models.prompting.methods import tfup  # noqa: F401,E402
from models.prompting.methods import tip_adapter, tip_adapter_f, clip_adapter  # noqa: F401,E402
from models.prompting.methods import taskres, lp_plus_plus, clap  # noqa: F401,E402
from models.prompting.methods import clip_lora  # noqa: F401,E402
from models.prompting.methods import gopro  # noqa: F401,E402
from models.prompting.methods import mocoop  # noqa: F401,E402
from models.prompting.methods import ramt  # noqa: F401,E402
from models.prompting.methods import blackvip  # noqa: F401,E402
from models.prompting.methods import nola  # noqa: F401,E402
from models.prompting.methods import spg  # noqa: F401,E402
from models.prompting.methods import mvlpt  # noqa: F401,E402
from models.prompting.methods import cones, ept, ctp_tft, kapt  # noqa: F401,E402
from models.prompting.methods import apt, dpl, restore  # noqa: F401,E402
from models.prompting.methods import gram, pvp  # noqa: F401,E402

__all__ = ["METHODS", "MethodSpec", "get_method", "parse_method_parameters"]
