"""langchain-anthropic's ChatAnthropic on Playbook's outbound client (tenants.outbound).

ChatAnthropic takes no `http_client` (ChatOpenAI does): it builds its SDK clients in two
cached properties, which this subclass builds the same way with the outbound clients.
agents.llm imports this module only for an Anthropic model (langchain_anthropic takes about
two seconds to import).
"""

from __future__ import annotations

from functools import cached_property

import anthropic
from langchain_anthropic import ChatAnthropic

from tenants.outbound import async_model_http_client, model_http_client


class OutboundChatAnthropic(ChatAnthropic):
    @cached_property
    def _client(self) -> anthropic.Client:
        return anthropic.Client(**self._client_params, http_client=model_http_client())

    @cached_property
    def _async_client(self) -> anthropic.AsyncClient:
        return anthropic.AsyncClient(**self._client_params, http_client=async_model_http_client())
