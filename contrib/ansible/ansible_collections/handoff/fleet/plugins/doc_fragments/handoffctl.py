# -*- coding: utf-8 -*-
# Copyright: handoff developers
# MIT OR Apache-2.0 (see the handoff repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The options every module of handoff.fleet takes to find the
    supervisor (module_utils/handoffctl.py's TARGET_ARGS)."""

    DOCUMENTATION = r'''
options:
  socket:
    description:
      - The supervisor's admin socket.
      - Mutually exclusive with O(config); without either, handoffctl's
        default path.
    type: path
  config:
    description:
      - The supervisor's config file; its C(socket) key names the admin
        socket.
    type: path
  handoffctl:
    description:
      - The handoffctl executable on the host, by path or name (searched in
        E(PATH)).
    type: path
    default: handoffctl
'''
