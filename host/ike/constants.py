"""IKEv2 protocol numbers (RFC 7296 §3, IANA "IKEv2 Parameters").

Plain ``IntEnum`` classes: they print readably in logs and compare equal to the
integers found on the wire.
"""
from enum import IntEnum

IKE_VERSION = 0x20          # major 2, minor 0 (§3.1)
IKE_HEADER_LEN = 28         # §3.1
GENERIC_HEADER_LEN = 4      # §3.2
NON_ESP_MARKER = b"\x00\x00\x00\x00"   # RFC 3948 §2.2, on port 4500
MAX_IKE_MESSAGE = 65535     # the Length field is 32 bits, UDP limits us to this


class ExchangeType(IntEnum):
    """§3.1 Exchange Type."""
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_INTERMEDIATE = 43       # RFC 9242
    IKE_FOLLOWUP_KE = 44        # RFC 9370


class Flag(IntEnum):
    """§3.1 header flags."""
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(IntEnum):
    """§3.2 Next Payload values."""
    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53        # RFC 7383


class ProtocolId(IntEnum):
    """§3.3.1 Protocol ID."""
    NONE = 0
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    """§3.3.2 Transform Type."""
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4                      # "Key Exchange Method" since RFC 9370
    ESN = 5
    ADDITIONAL_KE_1 = 6         # RFC 9370 §2.2.1: Additional Key Exchange 1..7 are types 6..12
    ADDITIONAL_KE_7 = 12


# RFC 9370: the transform types of the additional key exchanges, in the order they are done
ADDITIONAL_KE_TYPES = tuple(range(TransformType.ADDITIONAL_KE_1, TransformType.ADDITIONAL_KE_7 + 1))


class Encr(IntEnum):
    AES_CBC = 12
    AES_CTR = 13
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    CHACHA20_POLY1305 = 28


class Prf(IntEnum):
    HMAC_SHA1 = 2
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class Integ(IntEnum):
    NONE = 0
    HMAC_SHA1_96 = 2
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhGroup(IntEnum):
    """Key exchange methods (Transform Type 4, and 6..12 for RFC 9370's additional ones)."""
    NONE = 0
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21
    CURVE25519 = 31
    CURVE448 = 32
    MLKEM_768 = 36          # draft-ietf-ipsecme-ikev2-mlkem (IANA: ML-KEM-512 35, -768 36, -1024 37)
    MLKEM_1024 = 37


class Esn(IntEnum):
    NO = 0
    YES = 1


ATTR_KEY_LENGTH = 14        # §3.3.5, the only attribute IKEv2 defines (TV format)
ATTR_TV_FLAG = 0x8000


class IdType(IntEnum):
    """§3.5 ID Type."""
    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11


class CertEncoding(IntEnum):
    """§3.6 Cert Encoding."""
    X509_SIGNATURE = 4


class AuthMethod(IntEnum):
    """§3.8 Auth Method (+ RFC 4754, RFC 7427)."""
    RSA_SIG = 1
    PSK = 2
    DSS = 3
    ECDSA_256 = 9
    ECDSA_384 = 10
    ECDSA_521 = 11
    DIGITAL_SIGNATURE = 14


class HashAlgorithm(IntEnum):
    """RFC 7427 §7 hash algorithm identifiers in SIGNATURE_HASH_ALGORITHMS."""
    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


class TsType(IntEnum):
    """§3.13.1 TS Type."""
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8


class Notify(IntEnum):
    """§3.10.1 Notify Message Types (errors < 16384 <= status)."""
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    STATE_NOT_FOUND = 47                # RFC 9370 §2.2.4
    # status types
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396
    MULTIPLE_AUTH_SUPPORTED = 16404
    REDIRECT_SUPPORTED = 16406
    CHILDLESS_IKEV2_SUPPORTED = 16418
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438     # RFC 9242 §3.1
    ADDITIONAL_KEY_EXCHANGE = 16441             # RFC 9370 §2.2.4

