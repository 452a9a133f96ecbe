module lifeboat

go 1.26.8

require (
	github.com/cespare/xxhash/v2 v2.3.0
	github.com/google/uuid v1.6.0
	golang.org/x/sys v0.50.0
)
