"""Which adapter a serving Pod may load under which name.

Runtime loads are how fine-tuned models reach the shared deployments, so they decide whose
weights answer for a model id. A name may be loaded only from the one place that name
stands for:

- a fine-tuned model id `ft:<base>:<namespace>:<suffix>:<job>` from its own job's adapter
  directory in the store (tuneforge.jobfiles.adapter_uri), and only on a deployment of
  its base model (named by its model id, or by its BaseModel resource name in ids made
  before model ids existed): a tenant cannot have its weights answer for another
  tenant's model, nor load another tenant's adapter under a name of its own;
- an adapter the deployment's own spec lists, from the source listed there.

Locations are compared after resolving both to what the engine would read (a pvc:// URI
and the mounted path it stands for are the same place).
"""

from __future__ import annotations

from tuneforge.api.v1alpha1.finetuningjob import parse_fine_tuned_model
from tuneforge.contracts import ServingSpec
from tuneforge.jobfiles import adapter_uri
from tuneforge.storage import StoreError, resolve_uri


class NotPermitted(Exception):
    """A load this Pod refuses; the message says which rule it breaks."""


def permitted_source(name: str, path: str, spec: ServingSpec, store_root: str) -> str:
    """The source URI to load `name` from, if `path` is that source; else NotPermitted."""
    listed = {adapter.name: adapter.uri for adapter in spec.adapters}
    if name in listed:
        expected = listed[name]
    else:
        model = parse_fine_tuned_model(name)
        if model is None:
            raise NotPermitted(f"{name!r} is neither a fine-tuned model id nor an adapter of deployment "
                               f"{spec.namespace}/{spec.deployment}")
        if model.base_model not in (spec.served_model_name, spec.base_model):
            raise NotPermitted(f"{name!r} is a fine-tune of {model.base_model!r}; this deployment serves "
                               f"{spec.served_model_name!r}")
        expected = adapter_uri(store_root, model.namespace, model.job)
    if _location(path) != _location(expected):
        raise NotPermitted(f"{name!r} may only be loaded from its own adapter {expected}, not from {path}")
    return expected


def _location(uri: str) -> str:
    try:
        resolved = resolve_uri(uri)
    except StoreError as exc:
        raise NotPermitted(f"the adapter location {uri!r} cannot be resolved: {exc}") from exc
    return resolved.removeprefix("file://").rstrip("/")
