"""Our tag in the headers of jasmind's ``submit.sm.*`` messages: the wrappers around Jasmin's
own ``SMPPClientManagerPB.perspective_submit_sm`` (with a recording broker), and settlement
reading the header instead of unpickling the body (real Redis)."""

from __future__ import annotations

from jasmin.managers.content import SubmitSmContent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jasmin_credits.settlement import (
    PDU_ATTRIBUTE,
    TAG_HEADER,
    Outcome,
    Settlement,
    header_tag,
    read_tag,
)
from jasmin_credits.tagheaders import TagHeaders, install

from .test_linking import REF, client_manager, pdu, submit
from .test_settlement import UID, charges, funded, hold, money, resp, wire


class WrapperTests(SynchronousTestCase):
    def setUp(self):
        self.manager = client_manager()
        self.wrappers = install(self.manager)

    def published(self) -> list:
        return self.manager.amqpBroker.published

    def test_a_tagged_message_carries_its_tag_in_a_header(self):
        head = pdu(chain=3, parts=3)  # an HTTP chain: one message, every part counted
        msgid = self.successResultOf(submit(self.manager, head))
        [(key, content)] = self.published()
        self.assertEqual(key, "submit.sm.smsc")
        self.assertEqual(content.properties["message-id"], msgid)
        headers = content.properties["headers"]
        self.assertEqual(headers[TAG_HEADER], f"{UID} {REF} 3")
        self.assertEqual(headers["source_connector"], "httpapi")  # Jasmin's own, kept
        self.assertEqual(header_tag(content.properties), read_tag(head))
        self.assertEqual(self.wrappers.tagged, 1)

    def test_an_untagged_message_gets_no_header(self):
        self.successResultOf(submit(self.manager, pdu(tagged=False)))
        [(_, content)] = self.published()
        self.assertNotIn(TAG_HEADER, content.properties["headers"])
        self.assertIsNone(header_tag(content.properties))

    def test_the_header_belongs_to_one_message_only(self):
        """After a tagged message, other publishes (and the next untagged one) get none."""
        self.successResultOf(submit(self.manager, pdu()))
        other = SubmitSmContent(uid=UID, body=b"x", replyto="r", source_connector="smppsapi")
        self.manager.amqpBroker.publish(exchange="messaging", routing_key="submit.sm.smsc",
                                        content=other)
        self.successResultOf(submit(self.manager, pdu(tagged=False)))
        self.assertEqual([TAG_HEADER in c.properties["headers"] for _, c in self.published()],
                         [True, False, False])

    def test_a_tag_it_cannot_write_leaves_the_message_alone(self):
        """A tag without its fields: Jasmin queues the message as ever; settlement reads the
        body (and refuses the tag there)."""
        bad = pdu(tagged=False)
        setattr(bad, PDU_ATTRIBUTE, {"uid": UID})
        self.successResultOf(submit(self.manager, bad))
        [(_, content)] = self.published()
        self.assertNotIn(TAG_HEADER, content.properties["headers"])

    def test_installing_twice_wraps_once_on_the_instance_only(self):
        again = install(self.manager)
        self.assertIs(again, self.wrappers)
        self.assertIsInstance(self.manager.perspective_submit_sm.__self__, TagHeaders)
        self.assertNotIsInstance(getattr(client_manager().perspective_submit_sm, "__self__",
                                         None), TagHeaders)


class SettlementTests(TestCase):
    def message(self, header: str, body: bytes = b"not a pickle") -> SubmitSmContent:
        content = SubmitSmContent(uid=UID, body=body, replyto="submit.sm.resp.smsc",
                                  source_connector="smppsapi", destination_cid="smsc")
        content.properties["headers"][TAG_HEADER] = header
        return content

    async def test_the_header_links_without_reading_the_body(self):
        store = await funded(self)
        settlement = Settlement(store)
        ref = await hold(store)
        message = self.message(f"{UID} {ref} 1")  # the body is not even a pickle
        msgid = message.properties["message-id"]
        self.assertEqual(await settlement.submit_sm(*wire(message)), Outcome.SETTLED)
        self.assertEqual(settlement.tags_from_headers, 1)
        await settlement.submit_sm_resp(*wire(resp(msgid, "ESME_ROK")))
        self.assertEqual(await money(store), (1000 - 10, 0))
        self.assertEqual(len(await charges(store)), 1)

    async def test_a_malformed_header_is_dropped_and_links_nothing(self):
        store = await funded(self)
        settlement = Settlement(store)
        ref = await hold(store)
        for header in (UID, f"{UID} {ref}", f"{UID} {ref} 0", f"{UID} {ref} x",
                       f"{UID} {ref} 1 more", f"al:ice {ref} 1", f"{UID} not-a-ref 1",
                       f"{UID} {ref} 99999999"):
            message = self.message(header)
            self.assertEqual(await settlement.submit_sm(*wire(message)), Outcome.MALFORMED,
                             header)
            await settlement.submit_sm_resp(*wire(resp(message.properties["message-id"],
                                                       "ESME_ROK")))
        self.assertEqual(settlement.tags_from_headers, 0)
        self.assertEqual(await money(store), (1000, 10))  # still only held: nothing linked
