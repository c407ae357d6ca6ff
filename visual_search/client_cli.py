"""The client commands (`vsearch index | update | search | detect | delete`) live in the light
client package (`vsearch_client.cli`, also installed as `vsearch-client`); `vsearch` registers
them from here."""

from vsearch_client.cli import *  # noqa: F403
