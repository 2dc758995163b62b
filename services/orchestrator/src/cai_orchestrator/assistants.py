"""Assistants (personas): system prompt, model and limits, from a YAML file or the default."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_SYSTEM_PROMPT = (
    "You are Cai, a helpful assistant. Answer from the context you are given and say so when "
    "you do not know."
)


# LangGraph's checkpoint durability modes (docs/reliability.md, "Checkpoint durability"):
# sync: every step's checkpoint is written before the next step starts; async: written while the
# next step runs (LangGraph's default); exit: written once, when the run ends, pauses or fails.
Durability = Literal["sync", "async", "exit"]
DEFAULT_DURABILITY: Durability = "async"


class RetrievalSettings(BaseModel):
    """How the assistant fetches context from the retriever."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    collection: str = ""
    k: int = Field(default=4, ge=1, le=50)
    score_threshold: float = Field(default=0.0, ge=0.0, le=1.0)


class ToolSpec(BaseModel):
    """A tool an assistant may call: a built-in by name, or any tool by import path."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    # "package.module:attribute" of a LangChain tool or a function; empty: a built-in.
    import_path: str = Field(default="", alias="import")
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Pause the run (LangGraph interrupt) until a person approves or rejects each call.
    requires_approval: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):  # "search_knowledge_base" or "pkg.mod:fn"
            name = value.rsplit(":", 1)[-1] if ":" in value else value
            return {"name": name, "import": value if ":" in value else ""}
        return value


class Assistant(BaseModel):
    """One persona."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = ""
    description: str = ""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    model: str = ""
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    recursion_limit: int = Field(default=10, ge=1, le=200)
    # Tools bound to the model: built-in names, import paths ("package.module:attribute") or
    # objects {name, import, timeout_seconds, requires_approval}.
    tools: list[ToolSpec] = Field(default_factory=list)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    # History is trimmed to this many tokens before every model call.
    token_budget: int = Field(default=4000, ge=256, le=1_000_000)
    # When the thread's history passes this many tokens, older turns are summarised into the
    # state (default: three token budgets; 0 turns summaries off).
    summarize_after_tokens: int | None = Field(default=None, ge=0)
    # Clients may replace the system prompt: with a system message of the request (the latest
    # one), else with the thread metadata's `system_prompt`. When false, neither reaches the model.
    allow_system_prompt_override: bool = False
    # Extra HTTP headers on every call to the model endpoint (e.g. for a routing proxy).
    model_headers: dict[str, str] = Field(default_factory=dict)
    # When the thread's state is checkpointed during a run: async (LangGraph's default) writes
    # each step's checkpoint while the next step runs; sync before it runs; exit once, when the
    # run ends (about a fifth of the checkpointer's Redis commands, but the thread's history
    # then has one state per run, not one per step, and a run whose worker dies starts over).
    # docs/reliability.md ("Checkpoint durability") says what each mode means after a crash.
    durability: Durability = DEFAULT_DURABILITY
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def loaded_at(self) -> str:
        """When the assistants file was read (LangGraph's created/updated times)."""
        return _LOADED_AT

    @property
    def summary_threshold(self) -> int:
        """History size (tokens) past which older turns are summarised; 0 = never."""
        if self.summarize_after_tokens is None:
            return 3 * self.token_budget
        return self.summarize_after_tokens

    def configurable(self) -> dict[str, Any]:
        """What a client sees of the assistant's configuration."""
        return {
            "system_prompt": self.system_prompt,
            "model": self.model,
            "temperature": self.temperature,
            "tools": [t.name for t in self.tools],
            "retrieval": self.retrieval.model_dump(),
            "token_budget": self.token_budget,
            "recursion_limit": self.recursion_limit,
            "durability": self.durability,
        }


GRAPH_ID = "agent"
_LOADED_AT = datetime.now(UTC).isoformat()


class AssistantsError(ValueError):
    """The assistants file is invalid; the message names the bad field."""


# Used when no ASSISTANTS_FILE is given: answers grounded in the retriever's default collection
# (`make up` ingests docs/ there). Without a retriever it still answers, saying it lacked context.
DEFAULT = Assistant(
    id="chat",
    name="Chat",
    description="Cai's default assistant",
    retrieval=RetrievalSettings(enabled=True),
)


class Assistants:
    """The registry, looked up by id."""

    def __init__(self, items: list[Assistant]) -> None:
        self.by_id = {a.id: a for a in items}

    @classmethod
    def load(cls, path: str) -> Assistants:
        """Load from a YAML file (a list, or {"assistants": [...]}); the default when empty.

        Raises:
            AssistantsError: the file is missing, not YAML, or has an invalid field.
        """
        if not path:
            return cls([DEFAULT])
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise AssistantsError(f"cannot read assistants file {path}: {exc}") from exc
        if isinstance(raw, dict):
            raw = raw.get("assistants")
        if not isinstance(raw, list) or not raw:
            raise AssistantsError(f"{path}: expected a non-empty list of assistants")
        items = []
        for i, entry in enumerate(raw):
            try:
                items.append(Assistant.model_validate(entry))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise AssistantsError(f"{path}: assistants[{i}].{where}: {first['msg']}") from exc
        ids = [a.id for a in items]
        dupes = sorted({x for x in ids if ids.count(x) > 1})
        if dupes:
            raise AssistantsError(f"{path}: duplicate assistant id(s): {', '.join(dupes)}")
        return cls(items)

    def get(self, assistant_id: str) -> Assistant | None:
        """The assistant, or None."""
        return self.by_id.get(assistant_id)
