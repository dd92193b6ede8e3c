package api

// Routes returns the method and path of every route, from the one list that
// registers them.
func Routes() [][2]string {
	var out [][2]string
	for _, rt := range routeTable() {
		out = append(out, [2]string{rt.method, rt.path})
	}
	return out
}
