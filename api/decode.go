package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"

	"github.com/sagaflow/sagaflow/order"
)

// decodeJSON reads the body of r into dst strictly: the body must be JSON
// (Content-Type), at most cfg.MaxBodyBytes long, one JSON object with no
// trailing data, with no field that dst does not have and no value of the
// wrong type. schema is the type the client writes (dst's type, or the type
// dst stands in for); it names the fields in errors, such as
// "items[1].quantity".
func (s *server) decodeJSON(w http.ResponseWriter, r *http.Request, dst any, schema reflect.Type) error {
	if p := checkJSONContentType(r); p != nil {
		return p
	}
	limit := s.cfg.MaxBodyBytes
	if r.ContentLength > limit {
		return bodyTooLarge(limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return bodyTooLarge(limit)
		}
		return badRequest("", "", "the request body could not be read: "+err.Error())
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest("", "", "the request body is empty; send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return decodeProblem(body, schema, err)
	}
	end := dec.InputOffset()
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		return badRequest("", "", fmt.Sprintf("the request body has data after the JSON object (%s)", position(body, end)))
	}
	return nil
}

func bodyTooLarge(limit int64) *Problem {
	return &Problem{Type: TypeBodyTooLarge, Title: "Content Too Large", Status: http.StatusRequestEntityTooLarge,
		Detail: fmt.Sprintf("the request body is larger than %d bytes", limit)}
}

// checkJSONContentType accepts application/json and any +json media type,
// in UTF-8.
func checkJSONContentType(r *http.Request) *Problem {
	ct := r.Header.Get("Content-Type")
	unsupported := func(detail string) *Problem {
		return &Problem{Type: TypeUnsupportedMediaType, Title: "Unsupported Media Type", Status: http.StatusUnsupportedMediaType,
			Detail: detail, Errors: []order.FieldError{{Field: "Content-Type", Reason: "must be application/json"}}}
	}
	if ct == "" {
		return unsupported("the request has no Content-Type; send the body as application/json")
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return unsupported(fmt.Sprintf("the body is %q; send it as application/json", ct))
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return unsupported(fmt.Sprintf("the body is in charset %q; send UTF-8", cs))
	}
	return nil
}

// decodeProblem explains an error of json.Decoder.Decode on body.
func decodeProblem(body []byte, schema reflect.Type, err error) *Problem {
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntaxErr):
		// Offset counts the bytes read, the offending one included.
		return badRequest("", "", fmt.Sprintf("the request body is not valid JSON: %s (%s)",
			strings.TrimPrefix(syntaxErr.Error(), "json: "), position(body, syntaxErr.Offset-1)))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("", "", fmt.Sprintf("the request body is not valid JSON: it ends in the middle of a value (%s)",
			position(body, int64(len(body)))))
	case errors.As(err, &typeErr):
		field := typeFieldPath(body, schema, typeErr)
		if field == "" {
			return badRequest("", "", fmt.Sprintf("the request body must be a JSON object, not %s", typeErr.Value))
		}
		reason := "must be " + describeType(typeErr.Type)
		if typeErr.Value != "" {
			reason += ", not " + typeErr.Value
		}
		p := badRequest(field, reason, field+" "+reason)
		return p
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := unknownFieldPath(body, schema)
		if field == "" { // cannot happen: the walk mirrors the decoder
			field = strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		}
		return badRequest(field, "is not a known field", field+" is not a known field (check its spelling; GET /openapi.json describes the body)")
	}
	return badRequest("", "", "the request body could not be decoded: "+err.Error())
}

// position describes a byte offset in body as line, column (both from 1)
// and offset (from 0).
func position(body []byte, off int64) string {
	if off > int64(len(body)) {
		off = int64(len(body))
	}
	if off < 0 {
		off = 0
	}
	before := body[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int64(len(before)-bytes.LastIndexByte(before, '\n')-1) + 1
	return fmt.Sprintf("line %d, column %d, offset %d", line, col, off)
}

// describeType names what a JSON value of Go type t must be.
func describeType(t reflect.Type) string {
	if t == reflect.TypeFor[money]() || t == reflect.TypeFor[order.Decimal]() {
		return `a decimal amount such as 19.99 or "19.99", without a sign or an exponent`
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return "of type " + t.String()
}

// typeFieldPath returns the field of a type error with array indices and
// map keys, such as "items[1].quantity" where encoding/json says
// "items.quantity"; "" when the body itself has the wrong type.
func typeFieldPath(body []byte, schema reflect.Type, e *json.UnmarshalTypeError) string {
	// encoding/json names fields by their JSON names, preceded by the Go
	// names of embedded structs (which start with a capital letter, where
	// every JSON name of the API is lower case).
	var parts []string
	for _, p := range strings.Split(e.Field, ".") {
		if p != "" && !(p[0] >= 'A' && p[0] <= 'Z') {
			parts = append(parts, p)
		}
	}
	typePath := strings.Join(parts, ".")
	if typePath == "" {
		return ""
	}
	best, bestDist := typePath, int64(-1)
	walkJSON(body, schema, func(v jsonValue) bool {
		if v.typePath == typePath && !v.unknown {
			d := v.end - e.Offset
			if d < 0 {
				d = -d
			}
			if bestDist < 0 || d < bestDist {
				best, bestDist = v.path, d
			}
		}
		return true
	})
	return best
}

// unknownFieldPath returns the path of the first key in body that names no
// field of its object, as the decoder with DisallowUnknownFields finds it.
func unknownFieldPath(body []byte, schema reflect.Type) string {
	var found string
	walkJSON(body, schema, func(v jsonValue) bool {
		if v.unknown {
			found = v.path
			return false
		}
		return true
	})
	return found
}

// jsonValue is a value (or an unknown key) met by walkJSON.
type jsonValue struct {
	// path names it with array indices and map keys: items[1].quantity.
	path string
	// typePath names it as encoding/json does: items.quantity.
	typePath string
	// end is the offset just past its first token (a scalar, '{' or '['),
	// which is where encoding/json reports a type error.
	end int64
	// unknown marks an object key that names no field of the struct.
	unknown bool
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// walkJSON visits every value of body in document order, following the Go
// type t as encoding/json would (a nil type accepts anything), until visit
// returns false or the body ends or is malformed.
func walkJSON(body []byte, t reflect.Type, visit func(jsonValue) bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	w := walker{dec: dec, visit: visit}
	w.value(t, "", "")
}

type walker struct {
	dec   *json.Decoder
	visit func(jsonValue) bool
}

// value walks one value; it returns false to stop.
func (w *walker) value(t reflect.Type, path, typePath string) bool {
	tok, err := w.dec.Token()
	if err != nil {
		return false
	}
	if !w.visit(jsonValue{path: path, typePath: typePath, end: w.dec.InputOffset()}) {
		return false
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return true
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && (t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType)) {
		t = nil // decodes itself: anything goes inside
	}
	switch delim {
	case '{':
		for w.dec.More() {
			kt, err := w.dec.Token()
			if err != nil {
				return false
			}
			key, _ := kt.(string)
			child, childType, childTypePath := joinPath(path, key), reflect.Type(nil), typePath
			switch {
			case t == nil:
			case t.Kind() == reflect.Map:
				childType = t.Elem()
			case t.Kind() == reflect.Struct:
				name, ft, found := jsonField(t, key)
				if !found {
					if !w.visit(jsonValue{path: child, typePath: joinPath(typePath, key), end: w.dec.InputOffset(), unknown: true}) {
						return false
					}
					name = key
				}
				childType, childTypePath = ft, joinPath(typePath, name)
			}
			if !w.value(childType, child, childTypePath) {
				return false
			}
		}
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; w.dec.More(); i++ {
			if !w.value(elem, fmt.Sprintf("%s[%d]", path, i), typePath) {
				return false
			}
		}
	}
	_, err = w.dec.Token() // the closing delimiter
	return err == nil
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// jsonField finds the field of struct t that encoding/json decodes key
// into: an exact match of its JSON name first, then a case-insensitive one;
// of fields of the same name, the least deeply embedded one (which hides
// the others, as placeBody's amount hides order.PlaceRequest's).
func jsonField(t reflect.Type, key string) (name string, typ reflect.Type, found bool) {
	var foldName string
	var foldType reflect.Type
	for level := []reflect.Type{t}; len(level) > 0; {
		var next []reflect.Type
		for _, t := range level {
			for i := range t.NumField() {
				f := t.Field(i)
				tag := f.Tag.Get("json")
				if tag == "-" {
					continue
				}
				n, _, _ := strings.Cut(tag, ",")
				ft := f.Type
				if f.Anonymous && n == "" {
					for ft.Kind() == reflect.Pointer {
						ft = ft.Elem()
					}
					if ft.Kind() == reflect.Struct {
						next = append(next, ft)
						continue
					}
				}
				if !f.IsExported() {
					continue
				}
				if n == "" {
					n = f.Name
				}
				if n == key {
					return n, f.Type, true
				}
				if foldType == nil && strings.EqualFold(n, key) {
					foldName, foldType = n, f.Type
				}
			}
		}
		level = next
	}
	if foldType != nil {
		return foldName, foldType, true
	}
	return "", nil, false
}
