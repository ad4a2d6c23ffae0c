"""synthgen: multi-view synthetic image datasets from diffusers text-to-image models.

The data flows recipe -> plan -> generate -> write (see ARCHITECTURE.md). The Python API, one
function per `synthgen` command, each returning a result object (synthgen/api.py strings the
stages together; synthgen/cli.py prints what they return):

    import synthgen

    synthgen.validate(recipe) -> ValidateResult     synthgen.plan(recipe) -> PlanResult
    synthgen.generate(recipe, out) -> GenerateResult synthgen.finalize(out) -> FinalizeResult
    synthgen.inspect(out) -> InspectResult           synthgen.audit(out) -> AuditResult
    synthgen.edit(recipe, out) -> EditResult

A mistake in what they are given raises `synthgen.UserError`, whose message names the file,
field or argument, the bad value and the fix.
"""

import sys
import types

from synthgen.version import __version__

# Loaded on first use, so `import synthgen` (and `synthgen --help`) does not pay for the stages.
_API_NAMES = frozenset({
    "validate", "plan", "generate", "finalize", "inspect", "audit", "edit",
    "ValidateResult", "PlanResult", "GenerateResult", "FinalizeResult", "InspectResult",
    "AuditResult", "EditResult",
})

__all__ = sorted(_API_NAMES | {"UserError", "__version__"})


def __getattr__(name: str):
    if name in _API_NAMES:
        from synthgen import api

        return getattr(api, name)
    if name == "UserError":
        from synthgen.errors import UserError

        return UserError
    raise AttributeError(f"module 'synthgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """`synthgen.plan`, `.generate` and `.audit` name both an API function and a stage's
    module. Importing the module binds it here as an attribute, which would hide the function
    from `synthgen.generate(...)`; the function keeps the name instead. Code reaches the modules
    through `from synthgen.generate import load` or `from synthgen.plan import make_plan`, which
    read sys.modules (`import synthgen.generate.load as load` would find the function)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API_NAMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
