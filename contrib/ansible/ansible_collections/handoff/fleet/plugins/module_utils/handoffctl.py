# -*- coding: utf-8 -*-
# Copyright: handoff developers
# MIT OR Apache-2.0 (see the handoff repository)

"""Running handoffctl and reading its one JSON answer.

Every ``handoffctl ... --json`` run prints exactly one JSON object on stdout,
errors included, with Ansible's own ``changed``, ``failed`` and ``msg``
beside the verb's fields; the exit code says the same thing (0 done or
nothing to do, 1 rolled back or timed out, 2 refused or no supervisor,
3 busy, 4 rolled back with nobody serving). The modules pass the object on
as their result, with ``rc`` and an ``outcome`` word for ``when:`` clauses.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

# Options every module takes to find the supervisor.
TARGET_ARGS = dict(
    socket=dict(type='path'),
    config=dict(type='path'),
    handoffctl=dict(type='path', default='handoffctl'),
)

TARGET_EXCLUSIVE = [['socket', 'config']]

# Exit codes of handoffctl, by name (handoffctl's error.rs, Exit).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUSY = 3
EXIT_NOBODY_SERVES = 4

# Fields of an answer that are Ansible's, or that Ansible reserves.
RESERVED = ('changed', 'failed', 'msg', 'rc', 'invocation', 'skipped')


def command(module, verb):
    """The command line of ``handoffctl VERB --json`` for this module's
    supervisor (``socket`` or ``config``, else handoffctl's default)."""
    executable = module.params['handoffctl']
    if '/' not in executable:
        found = module.get_bin_path(executable, required=True)
        executable = found
    argv = [executable, verb, '--json']
    if module.params.get('socket'):
        argv += ['--socket', module.params['socket']]
    elif module.params.get('config'):
        argv += ['--config', module.params['config']]
    return argv


def run(module, argv):
    """Runs ``argv`` and returns ``(rc, answer, stderr)``; fails the module
    when it printed no JSON object (handoffctl missing or too old)."""
    rc, stdout, stderr = module.run_command(argv, check_rc=False)
    answer = None
    text = (stdout or '').strip()
    if text:
        try:
            answer = json.loads(text.splitlines()[-1])
        except ValueError:
            answer = None
    if not isinstance(answer, dict):
        module.fail_json(
            msg='%s printed no JSON answer (exit %s): %s'
            % (argv[0], rc, (stderr or text).strip()),
            rc=rc,
            stdout=stdout,
            stderr=stderr,
            cmd=argv,
        )
    return rc, answer, stderr


def outcome(rc, answer):
    """One word for what happened: ``committed``, ``rolled_back``,
    ``nobody_serving``, ``cancelled``, ``unchanged``, ``would_upgrade``,
    ``would_start``,
    ``served``, ``not_served``, or the kind of a refusal (``rejected``,
    ``busy``, ...) or of a failure here (``unreachable``, ``usage``,
    ``outcome_unknown``); ``error`` when handoffctl gave none)."""
    if 'committed' in answer:
        if answer['committed']:
            return 'committed'
        if answer.get('cancelled'):
            return 'cancelled'
        if answer.get('serving', True):
            return 'rolled_back'
        return 'nobody_serving'
    if 'action' in answer:
        if answer['action'] == 'none':
            return 'unchanged'
        return 'would_' + str(answer['action'])
    if 'served' in answer:
        return 'served' if answer['served'] else 'not_served'
    return answer.get('kind') or 'error'


def finish(module, rc, answer, stderr):
    """Ends the module with handoffctl's answer as its result."""
    result = dict((k, v) for k, v in answer.items() if k not in RESERVED)
    result['rc'] = rc
    result['outcome'] = outcome(rc, answer)
    if stderr:
        result['stderr'] = stderr
    changed = bool(answer.get('changed', False))
    msg = answer.get('msg') or answer.get('message') or ''
    if rc == EXIT_OK and not answer.get('failed', False):
        module.exit_json(changed=changed, msg=msg, **result)
    module.fail_json(changed=changed, msg=msg, **result)
