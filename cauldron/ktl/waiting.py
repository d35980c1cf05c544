"""Waiting until a condition on keywords holds: what every ``waitFor`` runs."""

from twisted.internet import defer
from twisted.python.failure import Failure

from cauldron import expressions
from cauldron.ktl._calls import _notInReactor, _reactor, _start, _wait


def _waitForExpression(text, timeout, case, config):
    from cauldron.ktl.service import Service  # not at the top: service imports keyword imports us

    expression = expressions.parse(text)  # refuses anything over budget, before any I/O
    keywords = [Service(service, config)[name] for service, name in expression.operands]

    def holds():
        values = {(kw.service.name, kw.name): kw._remote.latest for kw in keywords}
        return expression.evaluate(values, case=case)

    return _waitFor(keywords, holds, timeout, f"waitFor({text!r})")


def _waitFor(keywords, predicate, timeout, what):
    _notInReactor(what)
    for service in {id(kw.service): kw.service for kw in keywords}.values():
        service._ensureConnected()
    call = _start(what, _waitForInReactor, keywords, predicate, timeout)
    return _wait(call, timeout, what, stoppedResult=False)


def _waitForInReactor(keywords, predicate, timeout):
    """Monitor every keyword (primed) and fire True once ``predicate()`` holds.

    Cancelling the result (the caller's deadline passed first) stops every
    monitor and the timer, as finishing does.
    """
    done = False
    subscriptions = []
    primings = []
    timer = None

    def release():
        nonlocal done
        done = True
        if timer is not None and timer.active():
            timer.cancel()
        for subscription in subscriptions:
            subscription.stop()
        for priming in primings:
            if not priming.called:
                priming.cancel()  # its subscription stops; finish() ignores the error

    result = defer.Deferred(canceller=lambda d: None if done else release())

    def finish(outcome):
        if done:
            return
        release()
        if isinstance(outcome, Failure):
            result.errback(outcome)
        elif isinstance(outcome, Exception):
            result.errback(Failure(outcome))
        else:
            result.callback(outcome)

    def check(_value=None):
        # Evaluate only once every operand is primed: never on stale values.
        if done or len(subscriptions) < len(remotes):
            return
        if any(remote.latest is None for remote in remotes):
            return
        try:
            holds = predicate()
        except Exception:
            finish(Failure())
            return
        if holds:
            finish(True)

    def subscribed(subscription):
        if done:
            subscription.stop()
            return
        subscriptions.append(subscription)
        subscription.onEnd = finish  # the client stopped (ktl.shutdown): fail, never hang
        check()

    remotes = []
    for kw in keywords:
        remote = kw._bind(kw.service._remote)
        if all(remote is not other for other in remotes):
            remotes.append(remote)
    if timeout is not None:
        timer = _reactor().callLater(timeout, finish, False)
    for remote in remotes:
        if done:  # a monitor failed at once
            break
        d = remote.monitor(check, prime=True)
        primings.append(d)
        d.addCallbacks(subscribed, finish)
    return result
