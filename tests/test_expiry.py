"""allq.expiry: many time limits on one timer, driven by task.Clock."""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from allq.expiry import Expiry
from allq.errors import Timeout


def too_slow():
    return Timeout("too slow")


class ExpiryTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.expiry = Expiry(self.clock, resolution=0.1)

    def test_waiting_deferred_fails_with_the_chosen_error_at_its_deadline(self):
        d = self.expiry.watch(Deferred(), 5, too_slow)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(d, Timeout).value.message, "too slow")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.expiry), 0)

    def test_a_result_in_time_passes_through_and_leaves_no_timer(self):
        d = Deferred()
        self.expiry.watch(d, 5, too_slow)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        d.callback("answer")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d), "answer")

    def test_other_failures_pass_through_unchanged(self):
        d = self.expiry.watch(Deferred(), 5, too_slow)
        d.errback(ZeroDivisionError())
        self.failureResultOf(d, ZeroDivisionError)

    def test_an_own_cancel_stays_a_cancellation(self):
        """Only the expiry's cancellation turns into the chosen error."""
        from twisted.internet.defer import CancelledError

        d = self.expiry.watch(Deferred(), 5, too_slow)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_many_deadlines_one_timer(self):
        """Each Deferred fails at its own deadline; never more than one timer."""
        waiting = {seconds: self.expiry.watch(Deferred(), seconds, too_slow)
                   for seconds in (3, 1, 2, 2.05, 7)}
        answered = self.expiry.watch(Deferred(), 2, too_slow)
        answered.callback(None)
        for now in (1, 2, 2.1, 3, 7):
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)
            self.clock.advance(now - self.clock.seconds())
            for seconds, d in list(waiting.items()):
                if seconds <= now + 1e-9:
                    self.failureResultOf(d, Timeout)
                    del waiting[seconds]
                else:
                    self.assertNoResult(d)
        self.assertEqual(waiting, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_earlier_deadline_reschedules_the_timer(self):
        late = self.expiry.watch(Deferred(), 10, too_slow)
        early = self.expiry.watch(Deferred(), 1, too_slow)
        self.clock.advance(1)
        self.failureResultOf(early, Timeout)
        self.assertNoResult(late)
        self.clock.advance(9)
        self.failureResultOf(late, Timeout)

    def test_an_already_fired_deferred_schedules_nothing(self):
        d = self.expiry.watch(succeed(1), 5, too_slow)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_forgets_everything(self):
        d = self.expiry.watch(Deferred(), 5, too_slow)
        self.expiry.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertNoResult(d)
        d.callback(2)  # a late result after stop() is harmless
        self.assertEqual(len(self.expiry), 0)
