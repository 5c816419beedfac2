"""What POST .../pipelines will create: the pipeline's category and events (from the
body or a template) and the template's suggested features. Pure apart from nothing:
the caller supplies the project's existing features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.core.errors import FeatureNameTaken, FieldError, ServedKeyConflict, ValidationFailed
from app.schemas.feature import (
    AggregateFeatureCreate,
    DerivedFeatureCreate,
    FeatureCreate,
    FeatureRead,
)
from app.schemas.pipeline import Category, EventDefinition, PipelineCreate
from app.schemas.template import SuggestedFeature
from app.services.derived_rules import catalogue, expression_problems
from app.services.feature_rules import (
    event_problems,
    served_key_clashes,
    served_keys_of,
    spec_of,
)
from app.services.templates import get_template


@dataclass
class CreationPlan:
    category: Category
    events: list[EventDefinition]
    features: list[SuggestedFeature] = field(default_factory=list)

    def check_features(self, existing: Sequence[FeatureRead]) -> None:
        """Raises if a suggested feature cannot be created next to `existing`:
        ValidationFailed (it does not fit the events), FeatureNameTaken, ServedKeyConflict.
        """
        problems: list[FieldError] = []
        events = {e.name: e for e in self.events}
        aggregates = [f for f in self.features if f.kind == "aggregate"]
        # A suggested derived feature reads the template's own suggested aggregates.
        keys = catalogue(aggregates, [], lambda f: events.get(f.source_event))
        for suggestion in self.features:
            if suggestion.kind == "derived":
                _, found = expression_problems(suggestion.expression, keys, ["body", "template"])
            else:
                found = event_problems(spec_of(suggestion), self.events)
            for p in found:
                msg = f"suggested feature {suggestion.name}: {p.msg}"
                problems.append(FieldError(loc=["body", "events"], msg=msg, type=p.type))
        if problems:
            raise ValidationFailed(
                "The template's suggested features do not fit the given events; "
                "create without `with_features` or keep the template's events",
                fields=problems,
            )
        taken = sorted({s.name for s in self.features} & {f.name for f in existing})
        if taken:
            raise FeatureNameTaken(
                "The template's suggested features already exist in this project: "
                + ", ".join(taken)
                + "; create the pipeline without `with_features`"
            )
        for suggestion in self.features:
            clashes = served_key_clashes(served_keys_of(suggestion), existing)
            if clashes:
                key, owner = clashes[0]
                raise ServedKeyConflict(f"Served key {key!r} is already produced by {owner!r}")

    def feature_bodies(self, pipeline_id: str) -> list[FeatureCreate]:
        """Returns the create bodies of the suggested features for the new pipeline
        (aggregates first: a derived one is checked against them when created)."""
        bodies: list[FeatureCreate] = []
        for s in sorted(self.features, key=lambda f: f.kind == "derived"):
            if s.kind == "derived":
                bodies.append(
                    DerivedFeatureCreate(
                        kind="derived",
                        name=s.name,
                        description=s.description,
                        pipeline_id=pipeline_id,
                        expression=s.expression,
                    )
                )
                continue
            bodies.append(
                AggregateFeatureCreate(
                    name=s.name,
                    description=s.description,
                    pipeline_id=pipeline_id,
                    source_event=s.source_event,
                    aggregation=s.aggregation,
                    field=s.field,
                    time_windows=list(s.time_windows),
                    size=s.size,
                    filter=s.filter,
                    entity=s.entity,
                )
            )
        return bodies


def plan_creation(body: PipelineCreate) -> CreationPlan:
    """Returns what to create; raises ValidationFailed for an unknown template, a missing
    category, or `with_features` without a template."""
    template = None
    if body.template is not None:
        template = get_template(body.template)
        if template is None:
            msg = (
                f"no pipeline template named {body.template!r} (see GET /api/v1/pipeline-templates)"
            )
            raise ValidationFailed(
                f"body.template: {msg}",
                fields=[FieldError(loc=["body", "template"], msg=msg, type="template_unknown")],
            )
    if body.with_features and template is None:
        msg = "with_features needs a template"
        raise ValidationFailed(
            f"body.with_features: {msg}",
            fields=[FieldError(loc=["body", "with_features"], msg=msg, type="template_required")],
        )
    category = body.category or (template.category if template is not None else None)
    if category is None:
        msg = "category is required unless a template gives it"
        raise ValidationFailed(
            f"body.category: {msg}",
            fields=[FieldError(loc=["body", "category"], msg=msg, type="missing")],
        )
    if body.events is not None:
        events = list(body.events)
    elif template is not None:
        events = [e.model_copy(deep=True) for e in template.events]
    else:
        events = []
    suggested = list(template.suggested_features) if template and body.with_features else []
    return CreationPlan(category=category, events=events, features=suggested)
