base:
  '*':
    - deploytoken-guard     # first in every run: nothing deploys without the token
  kingfisher-main:
    - kingfisher
