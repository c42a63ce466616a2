#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: handoff developers
# MIT OR Apache-2.0 (see the handoff repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: handoff_upgrade
short_description: Upgrade a daemon run by handoffctl to a build, with nothing lost
version_added: "0.1.0"
description:
  - Runs C(handoffctl upgrade --json) on the host and returns its answer.
    The supervisor replaces the serving generation of the daemon with one
    running O(binary); the listening sockets and, in exclusive mode, the
    data are handed over, so no connection is refused and no acknowledged
    write is lost.
  - Idempotent by default (O(if_changed)); a host that already runs a binary
    with the target's sha256 reports C(changed=false) and nothing happens.
  - In check mode, C(handoffctl upgrade --check) makes every check the
    upgrade would make (binary allowed, present, executable, sha256, bounds,
    the supervisor up and not busy) and reports what it would do; nothing
    changes on the host.
  - The task fails when the upgrade rolled back (the old build still
    serves, RV(outcome=rolled_back)), when nobody serves after the rollback
    (RV(outcome=nobody_serving), RV(serving=false)), and when the request was
    refused or the supervisor is busy.
options:
  binary:
    description:
      - Absolute path of the new build on the host. It must be the
        supervisor's configured binary or in its C(allowed_binaries).
      - Default is the configured binary as it is on disk now.
    type: path
  sha256:
    description:
      - The build's expected sha256 (64 hexadecimal digits). The supervisor
        hashes the file and runs that same open file, so a file replaced
        meanwhile cannot be run by mistake.
      - Also what O(if_changed) compares when given; strongly recommended.
    type: str
  if_changed:
    description:
      - Do nothing when the serving generation already runs a binary with
        the target's sha256.
      - With V(false), an upgrade to the same build still replaces the
        generation (some use that to reload a configuration).
    type: bool
    default: true
  deadline:
    description:
      - Bound of the handoff, request to commit (for example V(30s), V(5m)).
        Default is the supervisor's (5 minutes unless configured).
    type: str
  drain_timeout:
    description:
      - The old generation's drain timeout for this handoff. Default is the
        supervisor's, at most O(deadline).
    type: str
  force:
    description:
      - Exclusive mode only. If the old generation fails to drain or seal,
        stop it and let the new one take over instead of rolling back.
    type: bool
    default: false
notes:
  - Bound the task with the C(timeout) keyword a little above O(deadline)
    plus the drain; the supervisor answers within its own bounds anyway.
  - The answer's fields are handoffctl's C(--json) fields, see the handoff
    repository's README.
seealso:
  - module: handoff.fleet.handoff_wait
extends_documentation_fragment:
  - handoff.fleet.handoffctl
author:
  - handoff developers (@handoff)
attributes:
  check_mode:
    description: A dry run through every check the upgrade makes (C(handoffctl upgrade --check)); nothing changes on the host.
    support: full
  diff_mode:
    description: Not supported; RV(current) and RV(target) name the builds.
    support: none
'''

EXAMPLES = r'''
- name: Upgrade to the new build (nothing when it already runs it)
  handoff.fleet.handoff_upgrade:
    binary: /opt/mydaemon/releases/1.4.2/mydaemon
    sha256: 9f2c0a3e7d41b6a5c8e0f1d2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6
    socket: /run/mydaemon/handoff.sock
    deadline: 2m
  register: upgraded

- name: Upgrade the configured binary in place, taking the socket from the config
  handoff.fleet.handoff_upgrade:
    config: /etc/mydaemon/mydaemon.toml
    if_changed: false
'''

RETURN = r'''
outcome:
  description:
    - What happened, in one word.
    - V(committed), V(rolled_back), V(nobody_serving), V(cancelled) (a stop
      of the supervisor cancelled it), V(unchanged),
      V(would_upgrade) or V(would_start) (check mode), or the kind of a
      refusal (V(rejected), V(busy), V(bad_request), V(permission_denied),
      V(stopping), V(overloaded), V(failed)), or of a failure on the host's
      side (V(unreachable), no supervisor at the socket; V(usage);
      V(outcome_unknown), the request was sent and no answer came; V(error)).
  returned: always
  type: str
  sample: committed
rc:
  description: The exit code of handoffctl (0 done or nothing to do, 1 rolled back, 2 refused or no supervisor, 3 busy, 4 nobody serves).
  returned: always
  type: int
  sample: 0
committed:
  description: Whether the new generation serves now.
  returned: when a handoff ran
  type: bool
  sample: true
serving:
  description: Whether a generation serves after the handoff (V(false) only when a rollback left nobody serving).
  returned: when a handoff ran
  type: bool
  sample: true
abort_reason:
  description: Why the handoff rolled back.
  returned: when a handoff ran
  type: str
  sample: "successor exited before it was ready: exit status 1"
handoff_id:
  description: The handoff's number on that supervisor.
  returned: when a handoff ran
  type: int
  sample: 7
generation:
  description: The serving generation's number after the step.
  returned: success
  type: int
  sample: 7
old_pid:
  description: The generation that served before.
  returned: when a handoff ran
  type: int
  sample: 4242
new_pid:
  description: The new generation (the one that failed, on a rollback).
  returned: when a handoff ran
  type: int
  sample: 4311
incumbent_stopped:
  description: Why the supervisor stopped the old generation before the commit, if it did.
  returned: when a handoff ran
  type: str
  sample: null
phases_ms:
  description: Milliseconds per phase of the handoff, which add up to RV(total_ms).
  returned: when a handoff ran
  type: dict
  sample: {"request": 0.1, "spawn": 0.4, "hello": 2.3, "warm_up": 1.5, "drain": 0.6, "seal": 0.4, "begin": 1.7, "commit": 0.2}
total_ms:
  description: Milliseconds from the request to the verdict.
  returned: when a handoff ran
  type: float
  sample: 7.2
action:
  description: What the upgrade does or would do, V(upgrade), V(start) or V(none).
  returned: in check mode, and when nothing changed
  type: str
  sample: none
check:
  description: Whether this was a dry run.
  returned: in check mode, and when nothing changed
  type: bool
  sample: false
current:
  description: What the serving generation runs, C(path) and C(sha256).
  returned: in check mode, and when nothing changed
  type: dict
  sample: {"path": "/opt/mydaemon/releases/1.4.2/mydaemon", "sha256": "9f2c0a3e7d41b6a5c8e0f1d2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"}
target:
  description: The build the upgrade runs, C(path) and C(sha256).
  returned: in check mode, and when nothing changed
  type: dict
  sample: {"path": "/opt/mydaemon/releases/1.4.2/mydaemon", "sha256": "9f2c0a3e7d41b6a5c8e0f1d2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"}
kind:
  description: The kind of refusal or failure (as in RV(outcome)).
  returned: when refused or failed
  type: str
  sample: busy
message:
  description: The refusal, as handoffctl says it.
  returned: when refused
  type: str
  sample: another handoff is in flight
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.handoff.fleet.plugins.module_utils.handoffctl import (
    TARGET_ARGS,
    TARGET_EXCLUSIVE,
    command,
    finish,
    run,
)


def main():
    argument_spec = dict(
        binary=dict(type='path'),
        sha256=dict(type='str'),
        if_changed=dict(type='bool', default=True),
        deadline=dict(type='str'),
        drain_timeout=dict(type='str'),
        force=dict(type='bool', default=False),
    )
    argument_spec.update(TARGET_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=TARGET_EXCLUSIVE,
        supports_check_mode=True,
    )
    argv = command(module, 'upgrade')
    params = module.params
    for option, flag in (
        ('binary', '--binary'),
        ('sha256', '--sha256'),
        ('deadline', '--deadline'),
        ('drain_timeout', '--drain-timeout'),
    ):
        if params[option]:
            argv += [flag, params[option]]
    if params['if_changed']:
        argv.append('--if-changed')
    if params['force']:
        argv.append('--force')
    if module.check_mode:
        argv.append('--check')
    rc, answer, stderr = run(module, argv)
    finish(module, rc, answer, stderr)


if __name__ == '__main__':
    main()
