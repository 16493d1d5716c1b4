"""The control port's quality rules and results. Every call needs `control:admin`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict

from dataproduct.catalog import published_datasets
from dataproduct.quality_store import find_results, quality_overview, replace_rules
from dataproduct.security import Principal
from pipelines.runtime import ProductRuntime
from ports.auth import require_admin, runtime_of

router = APIRouter(prefix="/control", tags=["control"])
Admin = Annotated[Principal, Depends(require_admin)]


class RulesBody(BaseModel):
    """A dataset's whole rule set, in the descriptor's compact form; it replaces the current one.

    The rules are validated by the core, so a bad one is reported at its index (`rules.2`).
    """

    model_config = ConfigDict(extra="forbid")

    rules: list[Any]


@router.get("/quality")
def quality(request: Request, principal: Admin) -> dict[str, Any]:
    """Per dataset: the rules in effect, where they come from, and their latest results."""
    runtime = runtime_of(request)
    descriptor_rules = {name: spec.quality for name, spec in runtime.descriptor.datasets.items()}
    return {"datasets": quality_overview(runtime.storage, descriptor_rules)}


@router.get("/quality/results")
def quality_results(
    request: Request,
    principal: Admin,
    dataset: Annotated[str | None, Query(min_length=1)] = None,
    run_id: Annotated[str | None, Query(min_length=1)] = None,
) -> dict[str, Any]:
    """Results of one run (`run_id=`), or the latest of each rule; `dataset=` narrows them."""
    return {"results": find_results(runtime_of(request).storage, dataset, run_id)}


@router.put("/quality/{dataset}")
def put_quality(
    dataset: str, body: RulesBody, request: Request, principal: Admin
) -> dict[str, Any]:
    """Replace a dataset's rules; validated first, a refused set changes nothing."""
    runtime = runtime_of(request)
    return replace_rules(
        runtime.storage,
        dataset,
        body.rules,
        submitted_by=principal.subject,
        known_datasets=_known_datasets(runtime),
    )


def _known_datasets(runtime: ProductRuntime) -> set[str]:
    """Output datasets rules may be set for: documented, in the current pipeline, published."""
    current = runtime.pipeline()
    models = current.pipeline.models if current else ()
    with runtime.storage.reader() as cursor:
        published = {dataset.name for dataset in published_datasets(cursor)}
    outputs = {model.name for model in models if model.layer == "output"}
    return set(runtime.descriptor.datasets) | outputs | published
