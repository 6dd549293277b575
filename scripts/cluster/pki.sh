# Certificates and kubeconfigs for the local cluster (openssl only). Sourced by `up`.
# shellcheck shell=bash

# cert NAME SUBJECT EKU [SAN] [CA]: a key + certificate signed by CA (default: the cluster CA).
cert() {
  local name=$1 subj=$2 eku=$3 san=${4:-} ca=${5:-ca}
  [[ -s "$PKI/$name.crt" && -s "$PKI/$name.key" ]] && return 0
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    if [[ -n "$san" ]]; then echo "subjectAltName=$san"; fi
  } > "$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
    -out "$PKI/$name.crt" -days 3650 -sha256 -extfile "$ext" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
  chmod 600 "$PKI/$name.key"
}

# ca NAME CN: a self-signed CA.
ca() {
  [[ -s "$PKI/$1.crt" ]] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/$1.key" -out "$PKI/$1.crt" \
    -days 3650 -sha256 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  chmod 600 "$PKI/$1.key"
}

ensure_pki() {
  mkdir -p "$PKI"; chmod 700 "$PKI"
  [[ -s "$PKI/ca.crt" ]] || log "creating the cluster CA and certificates in $PKI"
  ca ca conveyor-cluster-ca
  # The request-header (front proxy) CA the API server trusts for aggregated APIs;
  # without it every component logs "missing content for CA bundle" errors.
  ca front-proxy-ca conveyor-front-proxy-ca
  cert front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
  cert apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:$NODE_NAME,IP:127.0.0.1,IP:$HOST_IP,IP:$KUBERNETES_SVC_IP"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  cert admin "/O=system:masters/CN=conveyor-admin" clientAuth
  cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  cert scheduler "/CN=system:kube-scheduler" clientAuth
  cert kube-proxy "/CN=system:kube-proxy" clientAuth
  cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" serverAuth \
    "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$HOST_IP"
  if [[ ! -s "$PKI/sa.key" ]]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    chmod 600 "$PKI/sa.key"
  fi
}

b64() { base64 -w0 < "$1"; }

# kubeconfig_cert FILE SERVER CERTNAME USER
kubeconfig_cert() {
  local file=$1 server=$2 name=$3 user=$4
  cat > "$file.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: conveyor
  cluster:
    server: $server
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$PKI/$name.crt")
    client-key-data: $(b64 "$PKI/$name.key")
contexts:
- name: $user@conveyor
  context:
    cluster: conveyor
    user: $user
current-context: $user@conveyor
KC
  chmod 600 "$file.tmp"; mv "$file.tmp" "$file"
}

# kubeconfig_token FILE SERVER USER NAMESPACE TOKEN
kubeconfig_token() {
  local file=$1 server=$2 user=$3 ns=$4 token=$5
  cat > "$file.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: conveyor
  cluster:
    server: $server
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $user
  user:
    token: $token
contexts:
- name: $user@conveyor
  context:
    cluster: conveyor
    namespace: $ns
    user: $user
current-context: $user@conveyor
KC
  chmod 600 "$file.tmp"; mv "$file.tmp" "$file"
}
