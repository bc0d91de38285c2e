{#- Every deploytoken/* event from the master bus, posted to the chat of deploytoken:notify by the runner,
    which posts only the events that its own calls sealed with the master's key. Enable it with:
      reactor:
        - 'deploytoken/*': [salt://reactor/deploytoken.sls]
#}
deploytoken chat:
  runner.deploytoken.announce:
    - args:
      - tag: {{ tag | json }}
      - data: {{ data | json }}
