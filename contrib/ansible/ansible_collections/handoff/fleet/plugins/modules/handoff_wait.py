#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: handoff developers
# MIT OR Apache-2.0 (see the handoff repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: handoff_wait
short_description: Wait until a host's daemon has served a build for a while (the gate between batches)
version_added: "0.1.0"
description:
  - Runs C(handoffctl wait --json) on the host. It succeeds once the
    serving generation (running the build O(sha256), if given) has served
    for O(serving_for) since its commit or resumption, with no restart and
    no automatic rollback in that time, no handoff in flight and no older
    generation still kept in probation.
  - It fails at O(timeout) with the reason (nobody serves, another build
    serves, still in probation, served for too short a time).
  - Put it after the upgrade in a play with C(serial) batches and
    C(max_fail_percentage=0), so a batch that does not stay healthy stops
    the rollout before the next batch starts.
  - In check mode nothing is waited for, since no upgrade happened; the
    supervisor's status is read instead, so an unreachable host still
    fails.
options:
  serving_for:
    description:
      - How long the generation must have served (for example V(30s), V(5m)).
    type: str
    required: true
  timeout:
    description:
      - Give up after this long. Default is O(serving_for) plus 5 minutes.
    type: str
  sha256:
    description:
      - The build that must be serving (sha256 of its binary, 64
        hexadecimal digits). Without it, any build passes, including an
        old one resumed by an automatic rollback.
    type: str
seealso:
  - module: handoff.fleet.handoff_upgrade
extends_documentation_fragment:
  - handoff.fleet.handoffctl
author:
  - handoff developers (@handoff)
attributes:
  check_mode:
    description: Nothing is waited for; the supervisor's status is read, so an unreachable host still fails.
    support: full
  diff_mode:
    description: Not supported; nothing changes.
    support: none
'''

EXAMPLES = r'''
- name: Gate - the new build has served for 30 seconds without a restart or rollback
  handoff.fleet.handoff_wait:
    serving_for: 30s
    sha256: 9f2c0a3e7d41b6a5c8e0f1d2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6
    timeout: 10m
    socket: /run/mydaemon/handoff.sock
'''

RETURN = r'''
outcome:
  description: V(served), V(not_served), V(not_waited) (check mode), or V(error) (no answer, bad input).
  returned: always
  type: str
  sample: served
rc:
  description: The exit code of handoffctl (0 served, 1 not within the timeout, 2 bad input).
  returned: always
  type: int
  sample: 0
served:
  description: Whether the gate passed.
  returned: when handoffctl waited
  type: bool
  sample: true
generation:
  description: The serving generation at the last look.
  returned: always
  type: int
  sample: 7
pid:
  description: Its pid.
  returned: when handoffctl waited
  type: int
  sample: 4311
sha256:
  description: The sha256 of what it runs.
  returned: when handoffctl waited
  type: str
  sample: 9f2c0a3e7d41b6a5c8e0f1d2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6
serving_for_ms:
  description: How long it had served, in milliseconds.
  returned: when handoffctl waited
  type: int
  sample: 30012
waited_ms:
  description: How long the gate waited, in milliseconds.
  returned: when handoffctl waited
  type: int
  sample: 29310
generations_seen:
  description: Every generation seen serving during the wait; more than one means a restart, a rollback or another upgrade.
  returned: when handoffctl waited
  type: list
  elements: int
  sample: [7]
reason:
  description: Why the gate did not pass.
  returned: when handoffctl waited
  type: str
  sample: "generation 7 (pid 4311) has served for 12s of 30s"
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.handoff.fleet.plugins.module_utils.handoffctl import (
    EXIT_OK,
    TARGET_ARGS,
    TARGET_EXCLUSIVE,
    command,
    finish,
    run,
)


def main():
    argument_spec = dict(
        serving_for=dict(type='str', required=True),
        timeout=dict(type='str'),
        sha256=dict(type='str'),
    )
    argument_spec.update(TARGET_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=TARGET_EXCLUSIVE,
        supports_check_mode=True,
    )
    params = module.params
    if module.check_mode:
        # No upgrade happened: report who serves, wait for nothing.
        rc, answer, stderr = run(module, command(module, 'status'))
        if rc != EXIT_OK:
            finish(module, rc, answer, stderr)
        module.exit_json(
            changed=False,
            msg='check mode: nothing waited for; generation %s serves sha256 %s now; '
            'the gate waits for %s to have served %s'
            % (
                answer.get('generation'),
                answer.get('binary_sha256'),
                'sha256 %s' % params['sha256'] if params['sha256'] else 'it',
                params['serving_for'],
            ),
            outcome='not_waited',
            rc=rc,
            generation=answer.get('generation'),
            pid=answer.get('child_pid'),
            sha256=answer.get('binary_sha256'),
            serving_for_ms=answer.get('serving_for_ms'),
        )
    argv = command(module, 'wait') + ['--serving-for', params['serving_for']]
    if params['timeout']:
        argv += ['--timeout', params['timeout']]
    if params['sha256']:
        argv += ['--sha256', params['sha256']]
    rc, answer, stderr = run(module, argv)
    finish(module, rc, answer, stderr)


if __name__ == '__main__':
    main()
