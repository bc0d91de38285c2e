deploy token held:
  deploytoken.held:
    - order: 1
    - failhard: True
