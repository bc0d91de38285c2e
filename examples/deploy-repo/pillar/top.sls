base:
  kingfisher-main:
    - kingfisher
