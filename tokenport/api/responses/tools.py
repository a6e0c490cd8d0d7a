"""Responses API tools as the engine sees them, and the engine's calls as the client expects them.

An engine serves chat-completion function tools only, so:
- `function` tools pass as they are;
- `namespace` tools (Codex's `multi_agent_v1`, `collaboration`, ...) are flattened: each tool in
  one becomes a function named `<namespace>__<name>`, and a call of that name goes back to the
  client as `name` + `namespace`, the shape the Responses API defines;
- `custom` tools (free-form input, optionally a Lark or regex grammar) become functions taking
  one string, `input`, with the grammar in the description (an engine cannot enforce it); a call
  goes back as a `custom_tool_call` with that `input`;
- hosted tools (`web_search`, `file_search`, `code_interpreter`, `image_generation`,
  `computer_use_preview`, `local_shell`, `mcp`, `tool_search` and any type not above) run on
  OpenAI's side, which no engine here has: they are dropped, and a `tool_choice` forcing one is a
  400. Tools may also arrive in an `additional_tools` input item (Codex does this for its
  default models); they join the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenport.gateway.errors import bad_request

SEPARATOR = "__"  # <namespace>__<name>: a valid function name on every engine
GRAMMAR_HINT_CHARS = 4000  # of a custom tool's grammar, copied into its description


@dataclass(frozen=True, slots=True)
class ClientTool:
    """A tool as the client declared it."""

    kind: str  # "function" | "custom"
    name: str
    namespace: str | None = None


@dataclass
class ToolMap:
    """The engine's function tools, and for each engine-side name the client's tool."""

    functions: list[dict] = field(default_factory=list)
    by_engine_name: dict[str, ClientTool] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)  # hosted tool types left out

    def engine_name(self, name: str, namespace: str | None = None) -> str:
        return f"{namespace}{SEPARATOR}{name}" if namespace else name

    def client_tool(self, engine_name: str) -> ClientTool:
        """The client's tool for a call the engine made (an unknown name passes as a function)."""
        return self.by_engine_name.get(engine_name) or ClientTool("function", engine_name)

    def add(self, tool: Any, where: str, namespace: str | None = None) -> None:
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad_request(f"{where}: a tool must be an object with a 'type'", param="tools")
        kind = tool["type"]
        if kind == "namespace" and namespace is None:
            ns = tool.get("name")
            if not isinstance(ns, str) or not ns or not isinstance(tool.get("tools"), list):
                raise bad_request(f"{where}: a namespace needs a 'name' and 'tools'", param="tools")
            for j, inner in enumerate(tool["tools"]):
                self.add(inner, f"{where}.tools[{j}]", ns)
        elif kind in ("function", "custom"):
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                raise bad_request(f"{where}: a {kind} tool needs a 'name'", param="tools")
            self._function(tool, kind, name, namespace)
        else:
            self.dropped.add(kind)

    def _function(self, tool: dict, kind: str, name: str, namespace: str | None) -> None:
        engine_name = self.engine_name(name, namespace)
        if engine_name in self.by_engine_name:
            return  # the same tool declared twice (e.g. in `tools` and `additional_tools`)
        description = tool.get("description") if isinstance(tool.get("description"), str) else ""
        if kind == "function":
            parameters = tool.get("parameters") or {"type": "object"}
        else:
            description = _with_grammar(description, tool.get("format"))
            parameters = {
                "type": "object",
                "properties": {"input": {"type": "string", "description": "the tool's free-form input"}},
                "required": ["input"],
            }
        fn: dict[str, Any] = {"name": engine_name, "parameters": parameters}
        if description:
            fn["description"] = description
        self.functions.append({"type": "function", "function": fn})
        self.by_engine_name[engine_name] = ClientTool(kind, name, namespace)

    def tool_choice(self, choice: Any) -> Any:
        """The engine's `tool_choice` for the client's."""
        if choice is None or choice in ("auto", "required", "none"):
            return choice
        if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
            raise bad_request("'tool_choice' must be auto, required, none or a tool", param="tool_choice")
        kind = choice["type"]
        if kind == "allowed_tools":
            mode = choice.get("mode", "auto")
            return mode if mode in ("auto", "required") else "auto"
        if kind in ("function", "custom"):
            name = choice.get("name")
            engine_name = self.engine_name(name, choice.get("namespace")) if isinstance(name, str) else None
            if engine_name not in self.by_engine_name:
                message = f"'tool_choice' names {name!r}, which is not in 'tools'"
                raise bad_request(message, param="tool_choice")
            return {"type": "function", "function": {"name": engine_name}}
        raise bad_request(
            f"'tool_choice' forces the hosted tool {kind!r}, which the models served here do not "
            "have: hosted tools are not run by this gateway",
            param="tool_choice",
        )


def _with_grammar(description: str, fmt: Any) -> str:
    if not isinstance(fmt, dict) or fmt.get("type") != "grammar":
        return description
    definition = fmt.get("definition")
    if not isinstance(definition, str):
        return description
    syntax = fmt.get("syntax") if isinstance(fmt.get("syntax"), str) else "lark"
    hint = f"The input must follow this {syntax} grammar:\n{definition[:GRAMMAR_HINT_CHARS]}"
    return f"{description}\n\n{hint}" if description else hint


def tool_map(body: dict) -> ToolMap:
    """The request's tools: `tools`, then those of any `additional_tools` input items."""
    tools = ToolMap()
    declared = body.get("tools")
    if declared is not None and not isinstance(declared, list):
        raise bad_request("'tools' must be an array", param="tools")
    for i, tool in enumerate(declared or []):
        tools.add(tool, f"tools[{i}]")
    items = body.get("input")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            if not isinstance(item.get("tools"), list):
                raise bad_request(f"input[{i}]: additional_tools needs 'tools'", param="input")
            for j, tool in enumerate(item["tools"]):
                tools.add(tool, f"input[{i}].tools[{j}]")
    return tools
