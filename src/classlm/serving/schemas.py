"""Request and response bodies of the HTTP API (pydantic; they also make the OpenAPI docs at ``/docs``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

REQUEST_FIELDS = ("text", "texts", "inputs", "class_mass", "out_of_scope", "priors", "abstain_below")


class ClassifyRequest(BaseModel):
    """One text or a list of texts. Unknown fields are refused, and nothing is coerced (``1`` is not a string)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | None = Field(default=None, description="A single text to classify.", examples=["The team won 3-1."])
    texts: list[str] | None = Field(default=None, description="Several texts, answered in the same order.")
    inputs: list[dict[str, str]] | None = Field(
        default=None,
        description="Inputs of several text fields, for a classifier trained on them (GET /v1/model, 'fields'), "
        "answered in the same order.",
        examples=[None],
    )
    class_mass: bool = Field(
        default=False,
        description="Also return the class mass: the probability the model puts on the class tokens, out of the "
        "whole vocabulary (low values mean the prompt or the text is off what the classifier expects).",
    )
    out_of_scope: bool = Field(
        default=False,
        description="Also return each text's out-of-scope scores (higher: more likely none of the classes fits): "
        "'energy' and 'max_proba', with class tokens 'class_mass' and 'answer_mass', and 'mahalanobis' (the "
        "distance to the training rows' classes) where the classifier has it: the best on clinc150 (README).",
    )
    priors: dict[str, float] | Literal["auto", "em", "bbse"] | None = Field(
        default=None,
        description="The class balance where these texts come from, when it differs from the training rows' "
        "(a weight per class, every class named; they need not sum to 1): the probabilities are moved to it by "
        'Bayes\' rule. Or "em" / "bbse": estimate it from this request\'s texts (EM, Saerens et al. 2002; BBSE, '
        'Lipton et al. 2018: needs a classifier calibrated on labelled rows); "auto": BBSE where the classifier '
        "was calibrated on 50 or more labelled rows of every class, else EM — send a few hundred texts at once for a "
        "steady estimate. The answer's 'priors' is the balance used. Default: the balance the service was set to "
        "(GET /v1/model, 'priors').",
        examples=[None],
    )
    abstain_below: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Answer the service's abstain label (and 'abstained': true) for a text whose top probability is "
        "below this. Default: the service's setting (GET /v1/model, 'limits').",
    )

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if sum(v is not None for v in (self.text, self.texts, self.inputs)) != 1:
            raise ValueError(
                "give exactly one of 'text' (a string), 'texts' (a list of strings) or 'inputs' (a list of objects "
                "with a string per text field)"
            )
        return self

    def all_texts(self) -> list[Any]:
        """The request's texts; ``inputs``' objects as they came (the classifier reads their fields)."""
        if self.inputs is not None:
            return list(self.inputs)
        return [self.text] if self.text is not None else list(self.texts or [])


class ClassifyResult(BaseModel):
    label: str | int | float | bool | None = Field(
        default=None, description="The most probable class (a number for number classes); single-label classifiers."
    )
    labels: list[str | int | float | bool] | None = Field(
        default=None,
        description="Multi-label classifiers: every class at or above its cut (GET /v1/model), maybe none.",
    )
    probabilities: dict[str, float] = Field(description="Every class's calibrated probability, in class order.")
    class_mass: float | None = Field(default=None, description="Only when the request asked for it.")
    out_of_scope: dict[str, float] | None = Field(
        default=None, description="Only when the request asked for it: each out-of-scope score of the text."
    )
    abstained: bool | None = Field(
        default=None,
        description="True where the top probability was below the abstain threshold (then 'label' is "
        "the abstain label); only when a threshold applies.",
    )
    truncated: bool | None = Field(
        default=None,
        description="True when the text was longer than the classifier reads and its end was cut off (inside the "
        "prompt's text slot, or at the sentence encoder's limit). Absent where the classifier does not say (an "
        "ensemble).",
    )


class ClassifyResponse(BaseModel):
    results: list[ClassifyResult]
    priors: dict[str, float] | None = Field(
        default=None,
        description="The class balance the probabilities are for, when it is not the training rows' (the request's "
        "priors or the estimate from its texts, or the deployment balance the classifier was adapted to).",
    )
    priors_method: Literal["em", "bbse"] | None = Field(
        default=None,
        description="How 'priors' was estimated from the request's texts, when the request asked for an estimate "
        '("auto" answers with the one it chose).',
    )


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}
