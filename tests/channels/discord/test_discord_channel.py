"""The Discord channel end to end: a fake Discord API and the host, both served on loopback.

Every interaction is signed by the test's own Ed25519 key and posted by the fake to the
host's endpoint, as Discord does; the channel answers through the fake's REST API.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from agenthost import ChannelCommand, HostMessage, NativeIdAllowlist
from agenthost.backends.linking import OneTimeCodeLinker
from agenthost.channels.discord import AutocompleteQuery
from tests.channels.discord.conftest import TIMEOUT, Recorder, discord_host, fake_discord
from tests.channels.discord.interactions import (
    GENERAL,
    GUILD,
    ask,
    autocomplete,
    button,
    fixture,
    modal,
    new_user,
    next_id,
    ping,
    slash,
)

pytestmark = pytest.mark.anyio

DEFERRED = {"type": 5}
CODE = re.compile(r"/link [0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}")
EPHEMERAL = 1 << 6


class Gated:
    """Streams ``first`` at once, then waits for ``release`` before ``rest``."""

    def __init__(self, first: str, rest: str) -> None:
        self.first, self.rest = first, rest
        self.release = anyio.Event()
        self.runs = 0

    async def __call__(self, messages: list[HostMessage]) -> AsyncIterator[str]:
        self.runs += 1
        yield self.first
        await self.release.wait()
        yield self.rest


# --- verification first ----------------------------------------------------------------------


async def test_a_ping_is_answered_pong_and_the_menu_is_registered(tmp_path: Path) -> None:
    async with (
        fake_discord() as (fake, api),
        discord_host(
            Recorder(), tmp_path, fake, api, host_options={"linker": OneTimeCodeLinker()}
        ) as h,
    ):
        response = await h.send(ping())
        assert response.status_code == 200
        assert response.json() == {"type": 1}
        [put] = fake.called("PUT /applications/{app}/commands")
        assert put.status == 200
        names = [command["name"] for command in fake.commands["global"]]
        assert names == ["ask", "link", "unlink", "new", "help"]


async def test_commands_go_to_development_guilds_when_given(tmp_path: Path) -> None:
    async with (
        fake_discord() as (fake, api),
        discord_host(
            Recorder(), tmp_path, fake, api, command_guild_ids=[GUILD], ask_command="agent"
        ),
    ):
        assert "global" not in fake.commands
        assert [c["name"] for c in fake.commands[GUILD]] == ["agent", "new", "help"]


async def test_forged_tampered_or_unsigned_interactions_get_401_and_run_nothing(
    tmp_path: Path,
) -> None:
    target = Recorder()
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        user = new_user()
        forged = await h.send(ask("hi", user=user), signature="ab" * 64)
        assert forged.status_code == 401
        assert forged.json() == {"message": "invalid request signature", "code": 0}

        original = ask("hi", user=user)
        tampered = json.dumps({**original, "data": {**original["data"], "name": "new"}}).encode()
        assert (await h.send(original, body=tampered)).status_code == 401

        # A ping must be signed too: Discord checks that endpoints refuse bad signatures.
        assert (await h.send(ping(), signature="00" * 64)).status_code == 401

        async with httpx.AsyncClient() as client:
            bare = await client.post(fake.endpoint, json=ask("hi", user=user))
        assert bare.status_code == 401
        await h.idle()
        assert target.calls == []
        assert fake.messages == []


async def test_a_stale_timestamp_is_refused_even_with_a_valid_signature(tmp_path: Path) -> None:
    target = Recorder()
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        stale = await h.send(ask("hi", user=new_user()), timestamp=time.time() - 301)
        assert stale.status_code == 401
        future = await h.send(ask("hi", user=new_user()), timestamp=time.time() + 600)
        assert future.status_code == 401
        fresh = await h.send(ask("hi", user=new_user()), timestamp=time.time() - 60)
        assert fresh.status_code == 200
        await h.idle()
        assert target.calls == ["hi"]


async def test_a_replayed_interaction_id_runs_the_target_once(tmp_path: Path) -> None:
    target = Recorder()
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        interaction = ask("only once", user=new_user())
        first = await h.send(interaction)
        again = await h.send(interaction)
        assert first.json() == again.json() == DEFERRED
        await h.idle()
        # And once more after it was handled: the store remembers the id.
        assert (await h.send(interaction)).json() == DEFERRED
        await h.idle()
        await fake.settle()
        assert target.calls == ["only once"]
        replies = fake.called("PATCH /webhooks/{app}/{token}/messages/@original")
        assert len(replies) == 1


async def test_a_replayed_id_is_refused_by_another_replica_on_the_same_store(
    tmp_path: Path,
) -> None:
    target = Recorder()
    interaction = ask("across replicas", user=new_user())
    async with fake_discord() as (fake, api):
        async with discord_host(target, tmp_path, fake, api) as h:
            await h.answered(interaction)
        async with discord_host(target, tmp_path, fake, api) as h:
            assert (await h.send(interaction)).json() == DEFERRED
            await h.idle()
    assert target.calls == ["across replicas"]


async def test_malformed_json_with_a_valid_signature_is_a_clear_400(tmp_path: Path) -> None:
    async with fake_discord() as (fake, api), discord_host(Recorder(), tmp_path, fake, api) as h:
        response = await h.send(ping(), body=None)
        assert response.status_code == 200
        raw = b'{"type": 2, "id": '
        headers = fake.signer.headers(raw)
        async with httpx.AsyncClient() as client:
            bad = await client.post(fake.endpoint, content=raw, headers=headers)
        assert bad.status_code == 400
        assert bad.json() == {"message": "Not an interaction", "code": 50035}


# --- answering -------------------------------------------------------------------------------


async def test_deferred_then_streamed_edits_then_follow_ups(tmp_path: Path) -> None:
    rest = "\n\n".join(f"Section {i}: " + "words and more words " * 20 for i in range(8))
    target = Gated("Thinking about it", " ... done.\n\n" + rest)
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        interaction = ask("a long one please", user=new_user(), guild=GUILD)
        response = await h.send(interaction)
        assert response.json() == DEFERRED  # inside Discord's three seconds
        delivered = fake.delivered[interaction["id"]]
        assert delivered.acknowledged
        # The streamed text replaces "thinking..." while the target still runs.
        await fake.wait_until(
            lambda: (
                delivered.original is not None and delivered.original.content == "Thinking about it"
            )
        )
        assert delivered.followups == []
        target.release.set()
        await h.idle()

        full = "Thinking about it ... done.\n\n" + rest
        original = delivered.original
        assert original is not None
        shown = [original.content, *(m.content for m in delivered.followups)]
        assert len(shown) >= 2
        assert all(len(part) <= 2000 for part in shown)
        assert " ".join(shown).split() == full.split()  # nothing truncated
        assert original.history[0] == "Thinking about it"
        # The calls, in order: edits of @original, then the follow-ups.
        routes = [
            c.route for c in fake.calls if c.route.startswith(("PATCH /webhooks", "POST /webhooks"))
        ]
        first_followup = routes.index("POST /webhooks/{app}/{token}")
        assert set(routes[:first_followup]) == {"PATCH /webhooks/{app}/{token}/messages/@original"}
        assert set(routes[first_followup:]) == {"POST /webhooks/{app}/{token}"}
        for message in [original, *delivered.followups]:
            assert message.allowed_mentions == {"parse": []}
        assert target.runs == 1


async def test_a_5000_character_reply_arrives_whole_in_three_messages(tmp_path: Path) -> None:
    sentence = "The quick brown fox jumps over the lazy dog. "
    reply = (sentence * 112).strip()  # 5,039 characters
    assert len(reply) > 5000
    target = Recorder(lambda text: reply)
    async with (
        fake_discord() as (fake, api),
        discord_host(target, tmp_path, fake, api, stream=False) as h,
    ):
        delivered = await h.answered(ask("tell me about foxes", user=new_user()))
        assert delivered.original is not None
        parts = [delivered.original.content, *(m.content for m in delivered.followups)]
        assert len(parts) == 3
        assert all(len(p) <= 2000 for p in parts)
        assert " ".join(parts) == reply
        assert all(p.endswith("dog.") for p in parts)  # cut at sentence ends


async def test_model_output_never_pings_anyone(tmp_path: Path) -> None:
    target = Recorder(lambda text: "@everyone and <@&1187400000000000900>, look!")
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        delivered = await h.answered(ask("ping them", user=new_user(), guild=GUILD))
        assert delivered.original is not None
        assert delivered.original.content.startswith("@everyone")
        patches = fake.called("PATCH /webhooks/{app}/{token}/messages/@original")
        assert patches and all(c.body["allowed_mentions"] == {"parse": []} for c in patches)


async def test_a_button_click_becomes_a_turn(tmp_path: Path) -> None:
    target = Recorder()
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        user = new_user()
        await h.answered(ask("give me options", user=user, guild=GUILD))
        click = button("Tell me more", user=user, guild=GUILD)
        response = await h.send(click)
        assert response.status_code == 200
        assert response.json() == DEFERRED  # a new message answers the click
        await h.idle()
        assert target.calls == ["give me options", "Tell me more"]
        delivered = fake.delivered[click["id"]]
        assert delivered.original is not None
        assert delivered.original.content == "You said: Tell me more"


async def test_a_button_naming_a_host_command_runs_it(tmp_path: Path) -> None:
    target = Recorder()
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        user = new_user()
        response = await h.send(click := button("/help", user=user))
        assert response.json() == {"type": 5, "data": {"flags": EPHEMERAL}}
        await h.idle()
        assert target.calls == []
        original = fake.delivered[click["id"]].original
        assert original is not None and "/new" in original.content


async def test_a_modal_submit_becomes_a_turn(tmp_path: Path) -> None:
    target = Recorder()
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        submitted = modal(
            "plan_trip", {"title": "Trip to Lisbon", "details": "Three days"}, user=new_user()
        )
        delivered = await h.answered(submitted)
        assert target.calls == ["Trip to Lisbon\n\nThree days"]
        assert delivered.answer == DEFERRED


async def test_autocomplete_answers_an_empty_list_or_the_applications_choices(
    tmp_path: Path,
) -> None:
    async with fake_discord() as (fake, api):
        async with discord_host(Recorder(), tmp_path, fake, api) as h:
            response = await h.send(autocomplete("weather", "text", "Lis", user=new_user()))
            assert response.json() == {"type": 8, "data": {"choices": []}}

        asked: list[AutocompleteQuery] = []

        async def cities(query: AutocompleteQuery) -> list[tuple[str, str]]:
            asked.append(query)
            return [
                (c, c.lower()) for c in ("Lisbon", "Lille", "Lima") if c.startswith(query.value)
            ]

        weather = ChannelCommand("weather", "The weather somewhere")
        async with discord_host(
            Recorder(), tmp_path, fake, api, autocomplete=cities, commands=[weather]
        ) as h:
            [registered] = [c for c in fake.commands["global"] if c["name"] == "weather"]
            assert registered["options"][0]["autocomplete"] is True
            response = await h.send(autocomplete("weather", "text", "Li", user=new_user()))
            assert response.json() == {
                "type": 8,
                "data": {
                    "choices": [
                        {"name": "Lisbon", "value": "lisbon"},
                        {"name": "Lille", "value": "lille"},
                        {"name": "Lima", "value": "lima"},
                    ]
                },
            }
            assert asked == [AutocompleteQuery("weather", "text", "Li")]


async def test_an_unsupported_interaction_gets_an_ephemeral_message_not_a_400(
    tmp_path: Path,
) -> None:
    target = Recorder()
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        context_menu = fixture("message_context_command")
        context_menu["id"] = next_id()
        unknown = slash("dance", user=new_user(), guild=GUILD)
        for interaction in (context_menu, unknown):
            response = await h.send(interaction)
            assert response.status_code == 200
            body = response.json()
            assert body["type"] == 4
            assert body["data"]["flags"] == EPHEMERAL
            assert body["data"]["allowed_mentions"] == {"parse": []}
        await h.idle()
        assert target.calls == []


async def test_host_commands_answer_privately(tmp_path: Path) -> None:
    target = Recorder()
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        user = new_user()
        await h.answered(ask("remember me", user=user, guild=GUILD))
        new = slash("new", user=user, guild=GUILD)
        response = await h.send(new)
        assert response.json() == {"type": 5, "data": {"flags": EPHEMERAL}}
        await h.idle()
        await h.answered(ask("who am I?", user=user, guild=GUILD))
        assert target.calls == ["remember me", "who am I?"]  # /new never reached the target


async def test_the_link_ceremony_runs_in_a_dm(tmp_path: Path) -> None:
    async with (
        fake_discord() as (fake, api),
        discord_host(
            Recorder(), tmp_path, fake, api, host_options={"linker": OneTimeCodeLinker()}
        ) as h,
    ):
        user = new_user()
        in_guild = await h.answered(slash("link", user=user, guild=GUILD))
        assert in_guild.original is not None
        assert CODE.search(in_guild.original.content) is None  # no code in a shared channel
        assert in_guild.original.flags == EPHEMERAL
        in_dm = await h.answered(slash("link", user=user))
        assert in_dm.original is not None
        assert CODE.search(in_dm.original.content) is not None


async def test_after_the_token_expires_the_reply_uses_the_bot_token(tmp_path: Path) -> None:
    target = Gated("Working", " on it. Done.")
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        interaction = ask("slow one", user=new_user(), guild=GUILD)
        await h.send(interaction)
        delivered = fake.delivered[interaction["id"]]
        await fake.wait_until(lambda: delivered.original is not None)
        fake.expire(interaction["id"])  # fifteen minutes pass
        target.release.set()
        await h.idle()
        [posted] = fake.in_channel(GENERAL)
        assert posted.content == "Working on it. Done."
        assert posted.allowed_mentions == {"parse": []}
        refused = [c for c in fake.calls if c.status == 401]
        assert len(refused) <= 1  # one refused edit taught the channel; no retry loop


async def test_an_expired_private_reply_goes_to_the_dm_not_the_channel(tmp_path: Path) -> None:
    async with fake_discord() as (fake, api), discord_host(Recorder(), tmp_path, fake, api) as h:
        user = new_user()
        fake.forbidden_channels.add(GENERAL)
        interaction = slash("help", user=user, guild=GUILD)
        await h.send(interaction)
        fake.expire(interaction["id"])
        await h.idle()
        assert fake.in_channel(GENERAL) == []
        [dm] = fake.dm_messages(user)
        assert "/new" in dm.content


async def test_a_refused_channel_post_falls_back_to_the_dm(tmp_path: Path) -> None:
    target = Gated("Working", " on it.")
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        user = new_user()
        fake.forbidden_channels.add(GENERAL)
        interaction = ask("slow", user=user, guild=GUILD)
        await h.send(interaction)
        await fake.wait_until(lambda: fake.delivered[interaction["id"]].original is not None)
        fake.expire(interaction["id"])
        target.release.set()
        await h.idle()
        assert [m.content for m in fake.dm_messages(user)] == ["Working on it."]


async def test_interactions_in_one_channel_are_answered_in_order(tmp_path: Path) -> None:
    target = Recorder()
    async with fake_discord() as (fake, api), discord_host(target, tmp_path, fake, api) as h:
        user = new_user()
        sent = [ask(f"message {i}", user=user) for i in range(5)]
        with anyio.fail_after(TIMEOUT):
            for interaction in sent:
                assert (await h.send(interaction)).status_code == 200
        await h.idle()
        assert target.calls == [f"message {i}" for i in range(5)]


async def test_an_interaction_cut_off_by_a_restart_is_answered_by_the_next_start(
    tmp_path: Path,
) -> None:
    stuck = Gated("Started", " but never finished")
    finisher = Recorder()
    interaction = ask("survive the restart", user=new_user(), guild=GUILD)
    async with fake_discord() as (fake, api):
        async with discord_host(stuck, tmp_path, fake, api) as h:
            assert (await h.send(interaction)).json() == DEFERRED
            await fake.wait_until(lambda: stuck.runs == 1)
        # The process stopped mid-run; the interaction is still in the inbox.
        async with discord_host(finisher, tmp_path, fake, api) as h:
            await h.idle()
            await fake.wait_until(lambda: finisher.calls == ["survive the restart"])
        delivered = fake.delivered[interaction["id"]]
        assert delivered.original is not None
        assert delivered.original.content == "You said: survive the restart"


async def test_garbage_with_a_wrong_signature_is_401_not_400(tmp_path: Path) -> None:
    async with fake_discord() as (fake, api), discord_host(Recorder(), tmp_path, fake, api) as h:
        response = await h.send(ping(), body=b"this is not json")
        assert response.status_code == 401


async def test_past_the_follow_up_cap_of_a_user_installed_app_the_rest_goes_by_dm(
    tmp_path: Path,
) -> None:
    reply = "\n\n".join(f"Part {i}: " + "x" * 1900 for i in range(8))
    async with (
        fake_discord() as (fake, api),
        discord_host(Recorder(lambda text: reply), tmp_path, fake, api, stream=False) as h,
    ):
        user = new_user()
        interaction = fixture("private_channel_command")
        interaction.update(id=next_id(), token=f"aW50ZXJhY3Rpb246{next_id()}private")
        interaction["user"]["id"] = user
        delivered = await h.answered(interaction)
        assert delivered.original is not None
        shown = [delivered.original.content, *(m.content for m in delivered.followups)]
        assert len(delivered.followups) == 5  # Discord's cap for user-installed apps
        rest = [m.content for m in fake.dm_messages(user)]
        assert [p.split(":")[0] for p in shown + rest] == [f"Part {i}" for i in range(8)]


async def test_the_allowlist_decides_per_user_and_a_denial_is_bland(tmp_path: Path) -> None:
    target = Recorder()
    ada, mallory = new_user(), new_user()
    async with (
        fake_discord() as (fake, api),
        discord_host(
            target, tmp_path, fake, api, allowlist=NativeIdAllowlist({"discord": [ada]})
        ) as h,
    ):
        allowed = await h.answered(ask("hello", user=ada, guild=GUILD))
        denied = await h.answered(ask("hello", user=mallory, guild=GUILD))
        assert target.calls == ["hello"]  # only Ada's turn ran
        assert allowed.original is not None and allowed.original.content == "You said: hello"
        assert denied.original is not None
        assert mallory not in denied.original.content and "hello" not in denied.original.content


async def test_streamed_edits_skip_an_exhausted_bucket_instead_of_waiting(tmp_path: Path) -> None:
    finished: list[float] = []

    async def chatty(messages: list[HostMessage]) -> AsyncIterator[str]:
        for i in range(10):
            yield f"chunk {i}. "
            await anyio.sleep(0.06)
        finished.append(time.monotonic())

    async with fake_discord() as (fake, api), discord_host(chatty, tmp_path, fake, api) as h:
        fake.set_bucket("PATCH /webhooks/{app}/{token}/messages/@original", limit=1, window=4.0)
        delivered = await h.answered(ask("talk", user=new_user()))
        patches = fake.called("PATCH /webhooks/{app}/{token}/messages/@original")
        assert all(call.status == 200 for call in patches)  # never refused: never a 429
        assert len(patches) == 2  # the first preview, then the reply once the bucket reset
        # The run ended before the bucket reset: no preview waited for it.
        assert finished[0] < patches[0].at + 4.0 <= patches[1].at + 0.05
        assert delivered.original is not None
        assert delivered.original.content == "".join(f"chunk {i}. " for i in range(10)).strip()


async def test_a_rate_limited_reply_edit_is_waited_out(tmp_path: Path) -> None:
    async with (
        fake_discord() as (fake, api),
        discord_host(Recorder(), tmp_path, fake, api, stream=False) as h,
    ):
        fake.rate_limit("PATCH /webhooks/{app}/{token}/messages/@original", retry_after=0.3)
        delivered = await h.answered(ask("patience", user=new_user()))
        limited, edited = fake.called("PATCH /webhooks/{app}/{token}/messages/@original")
        assert (limited.status, edited.status) == (429, 200)
        assert edited.at - limited.at >= 0.25  # Discord's retry_after, honoured
        assert delivered.original is not None
        assert delivered.original.content == "You said: patience"


async def test_an_oversized_body_is_413_before_anything_else(tmp_path: Path) -> None:
    target = Recorder()
    async with (
        fake_discord() as (fake, api),
        discord_host(target, tmp_path, fake, api, max_body_bytes=2048) as h,
    ):
        response = await h.send(ask("x" * 4000, user=new_user()))
        assert response.status_code == 413
        assert set(response.json()) == {"message", "code"}
        await h.idle()
        assert target.calls == []


async def test_past_max_pending_an_interaction_is_told_to_retry_not_queued(
    tmp_path: Path,
) -> None:
    target = Gated("Working", " done.")
    async with (
        fake_discord() as (fake, api),
        discord_host(target, tmp_path, fake, api, max_pending=1) as h,
    ):
        first = await h.send(ask("first", user=new_user()))
        assert first.json() == DEFERRED
        second = await h.send(ask("second", user=new_user()))
        assert second.json()["type"] == 4
        assert second.json()["data"]["flags"] == EPHEMERAL
        target.release.set()
        await h.idle()
        assert target.runs == 1


async def test_a_server_error_on_an_edit_is_retried_but_never_on_a_follow_up(
    tmp_path: Path,
) -> None:
    reply = "\n\n".join(["a" * 1500, "b" * 1500])
    async with (
        fake_discord() as (fake, api),
        discord_host(Recorder(lambda text: reply), tmp_path, fake, api, stream=False) as h,
    ):
        fake.fail("PATCH /webhooks/{app}/{token}/messages/@original")  # may be repeated
        delivered = await h.answered(ask("two parts", user=new_user()))
        assert delivered.original is not None and delivered.original.content == "a" * 1500
        assert [m.content for m in delivered.followups] == ["b" * 1500]
        edits = fake.called("PATCH /webhooks/{app}/{token}/messages/@original")
        assert [c.status for c in edits] == [502, 200]

        fake.fail("POST /webhooks/{app}/{token}")  # sent twice, it would show twice
        again = await h.answered(ask("two parts again", user=new_user()))
        assert again.original is not None and again.followups == []
        [refused] = fake.called("POST /webhooks/{app}/{token}")[-1:]
        assert refused.status == 502
