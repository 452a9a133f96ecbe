package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name            string
	wantName        bool
	wantDescription bool
	wantBlockSize   bool
}

// parseExportName decodes the 32-bit length and the export name that start
// the data of INFO, GO and the meta-context options, and returns what
// follows, which must be at least trailer bytes.
func parseExportName(data []byte, trailer int) (string, []byte, error) {
	if len(data) < 4+trailer {
		return "", nil, fmt.Errorf("option data shorter than %d bytes", 4+trailer)
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-4-trailer) {
		return "", nil, fmt.Errorf("name length %d does not fit in %d bytes of option data", nameLen, len(data))
	}
	if nameLen > maxNameLen {
		return "", nil, fmt.Errorf("export name of %d bytes is longer than %d", nameLen, maxNameLen)
	}
	return string(data[4 : 4+nameLen]), data[4+nameLen:], nil
}

// parseInfoRequest decodes
//
//	32 bits name length, name, 16 bits count n, n x 16 bits NBD_INFO type.
func parseInfoRequest(data []byte) (infoRequest, error) {
	var r infoRequest
	name, rest, err := parseExportName(data, 2)
	if err != nil {
		return r, err
	}
	r.name = name
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*n {
		return r, fmt.Errorf("%d information requests need %d bytes, got %d", n, 2*n, len(rest))
	}
	for i := range n {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			r.wantName = true
		case infoDescription:
			r.wantDescription = true
		case infoBlockSize:
			r.wantBlockSize = true
		}
	}
	return r, nil
}

// metaContextRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
type metaContextRequest struct {
	name    string
	queries []string
}

// parseMetaContextRequest decodes
//
//	32 bits name length, name, 32 bits count n, n x (32 bits length, query).
func parseMetaContextRequest(data []byte) (metaContextRequest, error) {
	var r metaContextRequest
	name, rest, err := parseExportName(data, 4)
	if err != nil {
		return r, err
	}
	r.name = name
	n := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if uint64(n) > uint64(len(rest)/4) {
		return r, fmt.Errorf("%d queries do not fit in %d bytes", n, len(rest))
	}
	r.queries = make([]string, 0, n)
	for range n {
		if len(rest) < 4 {
			return r, errors.New("query length beyond the option data")
		}
		ql := binary.BigEndian.Uint32(rest)
		rest = rest[4:]
		if uint64(ql) > uint64(len(rest)) {
			return r, fmt.Errorf("query of %d bytes beyond the option data", ql)
		}
		r.queries = append(r.queries, string(rest[:ql]))
		rest = rest[ql:]
	}
	if len(rest) != 0 {
		return r, fmt.Errorf("%d bytes after the last query", len(rest))
	}
	return r, nil
}

// matchAllocation reports whether queries select base:allocation. For a
// LIST, no query and the wildcard "base:" match too; for a SET only the
// exact name does. Queries for other namespaces are ignored, as the spec
// requires.
func matchAllocation(queries []string, list bool) bool {
	if list && len(queries) == 0 {
		return true
	}
	for _, q := range queries {
		if q == contextBaseAllocation || (list && q == "base:") {
			return true
		}
	}
	return false
}
