package api

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// EnvOperatorTokens names the environment variable that may hold operator
// tokens, as name:token entries separated by commas or newlines.
const EnvOperatorTokens = "SAGAFLOW_OPERATOR_TOKENS"

// MinTokenLength is the shortest operator token accepted: a token is a
// password that guards every operator action, not a name.
const MinTokenLength = 16

// Tokens are the operators' bearer tokens, each with the name of who holds
// it. The name is what the API records as having acted; the token itself
// is kept only as a SHA-256 digest and never shown. The zero value (or
// nil) holds no token.
type Tokens struct {
	list []operatorToken
}

type operatorToken struct {
	name   string
	digest [sha256.Size]byte
}

// Len is the number of tokens.
func (t *Tokens) Len() int {
	if t == nil {
		return 0
	}
	return len(t.list)
}

// Names lists the operators, sorted, each once.
func (t *Tokens) Names() []string {
	if t == nil {
		return nil
	}
	var names []string
	for _, tok := range t.list {
		names = append(names, tok.name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Lookup returns the name of the operator whose token secret is. It
// compares secret with every token in constant time (digests of equal
// length, all of them compared whatever matches), so neither the time it
// takes nor its answer tells how much of a token a guess got right.
func (t *Tokens) Lookup(secret string) (name string, ok bool) {
	if t == nil {
		return "", false
	}
	d := sha256.Sum256([]byte(secret))
	found := -1
	for i := range t.list {
		if subtle.ConstantTimeCompare(d[:], t.list[i].digest[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", false
	}
	return t.list[found].name, true
}

// add adds a name:token entry; where says where it was written, for errors
// (which never show the token).
func (t *Tokens) add(entry, where string) error {
	name, secret, ok := strings.Cut(entry, ":")
	if !ok {
		return fmt.Errorf("%s: want name:token", where)
	}
	name, secret = strings.TrimSpace(name), strings.TrimSpace(secret)
	if err := checkOperatorName(name); err != nil {
		return fmt.Errorf("%s: operator name %w", where, err)
	}
	switch {
	case secret == "":
		return fmt.Errorf("%s: operator %s has no token", where, name)
	case len(secret) < MinTokenLength:
		return fmt.Errorf("%s: the token of operator %s is shorter than %d characters", where, name, MinTokenLength)
	case strings.IndexFunc(secret, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0:
		return fmt.Errorf("%s: the token of operator %s has a character other than visible ASCII (no spaces)", where, name)
	}
	d := sha256.Sum256([]byte(secret))
	for _, other := range t.list {
		if subtle.ConstantTimeCompare(d[:], other.digest[:]) == 1 {
			// One token for two entries would make the name who acted
			// ambiguous.
			return fmt.Errorf("%s: operator %s has the same token as an earlier entry of operator %s", where, name, other.name)
		}
	}
	t.list = append(t.list, operatorToken{name: name, digest: d})
	return nil
}

// checkOperatorName accepts 1 to 64 letters, digits and . _ @ -: a name
// that reads unambiguously in a log line and a saga's history.
func checkOperatorName(name string) error {
	if name == "" {
		return errors.New("is empty")
	}
	if len(name) > 64 {
		return errors.New("is longer than 64 characters")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._@-", r)) {
			return fmt.Errorf("%q may hold only letters, digits and . _ @ -", name)
		}
	}
	return nil
}

// ParseTokens reads operator tokens in the file format: one name:token a
// line; blank lines and lines starting with # are ignored, as are spaces
// around the name and the token. An error names the line at fault (and
// never shows a token).
func ParseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := t.add(line, fmt.Sprintf("line %d", n)); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read operator tokens: %w", err)
	}
	return t, nil
}

// ParseTokenList reads operator tokens in the environment's format
// (EnvOperatorTokens): name:token entries separated by commas or newlines;
// empty entries and entries starting with # are ignored. An error names the
// entry at fault, counting from 1 (and never shows a token).
func ParseTokenList(s string) (*Tokens, error) {
	t := &Tokens{}
	n := 0
	for _, line := range strings.Split(s, "\n") {
		for _, entry := range strings.Split(line, ",") {
			entry = strings.TrimSpace(entry)
			if entry == "" || strings.HasPrefix(entry, "#") {
				continue
			}
			n++
			if err := t.add(entry, fmt.Sprintf("entry %d", n)); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

// LoadTokens reads the operator tokens of file (the file format; none when
// file is empty) and of list (the environment's format, as the value of
// EnvOperatorTokens; none when empty), and joins them. A token found in
// both under two names is refused.
func LoadTokens(file, list string) (*Tokens, error) {
	all := &Tokens{}
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("operator tokens: %w", err)
		}
		defer f.Close()
		t, err := ParseTokens(f)
		if err != nil {
			return nil, fmt.Errorf("operator tokens %s: %w", file, err)
		}
		all.list = t.list
	}
	if list != "" {
		t, err := ParseTokenList(list)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", EnvOperatorTokens, err)
		}
		for i, tok := range t.list {
			for _, other := range all.list {
				if subtle.ConstantTimeCompare(tok.digest[:], other.digest[:]) == 1 && tok.name != other.name {
					return nil, fmt.Errorf("%s: entry %d: operator %s has the token of operator %s in %s", EnvOperatorTokens, i+1, tok.name, other.name, file)
				}
			}
			all.list = append(all.list, tok)
		}
	}
	return all, nil
}
